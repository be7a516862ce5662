"""Search quality and cost: SA + HC against the exhaustive optimum.

Prints JSON: for the demo model (K=20) and an analytic Gaussian-mixture flow, at each budget,
the exhaustive optimum, the searched loss as a ratio to it (median and worst over seeds), the
transformer forwards the search spent with and without prefix reuse, and the losses of the
uniform mask and of plain B-step Euler. Goals: worst ratio <= 1.02, prefix reuse >= 1.5x.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import _root  # noqa: F401  (tests.fixtures)
import torch

from budcache.demo.model import load_demo_model
from budcache.demo.problem import demo_batches, demo_denoisers, demo_inputs
from budcache.plan import uniform_mask
from budcache.sampling import OutputDenoiser, linear_sigmas
from budcache.search import EFFORTS, Batch, Evaluator, SearchConfig, exhaustive, run_search
from tests.fixtures.gmm import GaussianMixtureFlow


def bench_model(
    name: str, make_evaluator, steps: int, budgets: list[int], seeds: int, config: SearchConfig, save
) -> dict:
    out = {"model": name, "steps": steps, "budgets": {}}
    for b in budgets:
        ev = make_evaluator()
        t = time.perf_counter()
        opt = exhaustive(ev, b, progress=False)
        row = {
            "exhaustive": {
                "loss": opt.loss,
                "mask": "".join("#" if m else "." for m in opt.mask),
                "masks": ev.evaluations,
                "forwards": ev.forwards,
                "seconds": round(time.perf_counter() - t, 1),
            },
            "uniform_mask_loss": ev(uniform_mask(steps, b)),
            "plain_euler_loss": ev.schedule_loss(linear_sigmas(b)),
        }
        ratios, fwd, fwd_plain, evals, secs = [], [], [], [], []
        for seed in range(seeds):
            ev = make_evaluator()
            base = ev.forwards  # the teacher trajectory, counted in both columns
            r = run_search(ev, b, SearchConfig(**{**config.__dict__, "seed": seed}), progress=False)
            ratios.append(r.loss / opt.loss)
            fwd.append(ev.forwards - base)
            fwd_plain.append(ev.samples * ev.evaluations * b)
            evals.append(ev.evaluations)
            secs.append(r.seconds)
        row["search"] = {
            "ratio_median": statistics.median(ratios),
            "ratio_worst": max(ratios),
            "ratios": [round(x, 5) for x in ratios],
            "evaluations_mean": statistics.mean(evals),
            "forwards_mean": statistics.mean(fwd),
            "forwards_without_prefix_reuse_mean": statistics.mean(fwd_plain),
            "prefix_reuse_saving": statistics.mean(fwd_plain) / statistics.mean(fwd),
            "seconds_mean": round(statistics.mean(secs), 2),
        }
        out["budgets"][str(b)] = row
        save(out)
        print(
            f"{name} B={b}: worst ratio {max(ratios):.4f}, prefix saving {row['search']['prefix_reuse_saving']:.2f}x",
            flush=True,
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--budgets", type=int, nargs="+", default=[6, 8, 10])
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--calib", type=int, default=16, help="demo calibration samples")
    p.add_argument("--reuse", choices=("residual", "output"), default="residual")
    p.add_argument(
        "--effort",
        choices=list(EFFORTS),
        default="thorough",
        help="the search effort (default thorough: the README's figures were measured with it)",
    )
    p.add_argument("--iterations", type=int, default=None, help="override the effort's annealing proposals")
    p.add_argument("--starts", type=int, default=None, help="override the effort's starts")
    p.add_argument("--skip-demo", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("bench-out/search_optimality.json"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    config = dataclasses.replace(
        EFFORTS[a.effort], **{k: v for k, v in (("iterations", a.iterations), ("starts", a.starts)) if v is not None}
    )
    sigmas = linear_sigmas(a.steps)
    results = {"config": {**vars(a), "out": str(a.out)}, "models": []}
    a.out.parent.mkdir(parents=True, exist_ok=True)

    def save(model_result: dict) -> None:  # partial results survive an interrupted run
        done = [m for m in results["models"] if m is not model_result] + [model_result]
        a.out.write_text(json.dumps({**results, "models": done}, indent=1))

    gmm = GaussianMixtureFlow(dim=16, components=6, seed=0)
    x = gmm.noise(64, 0)
    results["models"].append(
        bench_model(
            "gaussian-mixture (analytic, output reuse)",
            lambda: Evaluator([Batch(OutputDenoiser(gmm), x)], sigmas),
            a.steps,
            a.budgets,
            a.seeds,
            config,
            save,
        )
    )

    if not a.skip_demo:
        model = load_demo_model()
        noise, labels = demo_inputs(a.calib, 0)
        with demo_denoisers(model, a.reuse) as make:
            results["models"].append(
                bench_model(
                    f"demo DigitsFlux ({a.reuse} reuse, {a.calib} calibration samples)",
                    lambda: Evaluator(demo_batches(make, noise, labels), sigmas),
                    a.steps,
                    a.budgets,
                    a.seeds,
                    config,
                    save,
                )
            )

    rows = [r for m in results["models"] for r in m["budgets"].values()]
    results["goals"] = {
        "worst_ratio": max(r["search"]["ratio_worst"] for r in rows),
        "worst_ratio_le_1.02": all(r["search"]["ratio_worst"] <= 1.02 for r in rows),
        "min_prefix_saving": min(r["search"]["prefix_reuse_saving"] for r in rows),
        "prefix_saving_ge_1.5": all(r["search"]["prefix_reuse_saving"] >= 1.5 for r in rows),
    }
    a.out.write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
