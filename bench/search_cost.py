"""Search cost against plan quality: the default (budget-first) search within its cap against the named uncapped
efforts, on the demo model (K=28, B in {6, 8, 10}, 32 calibration samples, and with ``--k50`` K=50, B in {14, 20},
16 samples; repeat and extrapolate), on the Gaussian-mixture flow (K=20, B in {6, 8, 10}, the exhaustive optimum
known, 10 noise seeds) and with ``--pipeline-prompts`` on the tiny FLUX pipeline (K=28, B=10).
Prints one JSON line per setting, writes ``bench-out/search_cost.json`` and the anytime plot
``bench-out/search_cost.png`` (best objective / best known against forwards per sample).

Forwards per sample count block-stack executions for one calibration sample, the teacher's and the rungs'
included (a batched forward over n samples counts n). On the demo the default runs as ``budcache search`` runs it
(``search_plan``: the cap covers the reference losses too) at its default cap, and once more at ``--curve-cap``
for the anytime curve; the curve read at the default cap must give the default run's plan (the search is nested:
``nested`` in each row). The best-known objective is the lowest any run found (``--reference``: earlier outputs
of this benchmark, e.g. the ``thorough`` and ``long`` efforts run once) or the exhaustive optimum. ``--held-out``:
PSNR against full compute on 100 held-out demo samples, of the default's plan and of the best-known plan.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import _root  # noqa: F401  (tests.fixtures)
import torch
from matplotlib.figure import Figure

import budcache
from budcache.demo.problem import demo_source
from budcache.evaluation.compare import static_outputs
from budcache.evaluation.metrics import psnr
from budcache.sampling import OutputDenoiser, linear_sigmas
from budcache.search import EFFORTS, Batch, Evaluator, default_cap, run_search, search_plan
from tests.fixtures.gmm import GaussianMixtureFlow, euler_optimum
from tests.fixtures.tiny import tiny_flux_pipeline


def text(mask) -> str:
    return "".join("#" if m == 1 else "." for m in mask)


def thin(curve: list) -> list:
    return [list(map(float, p)) for p in curve[:: max(1, len(curve) // 300)] + curve[-1:]]


def best_within(curve: list, spent: float) -> float:
    """The best loss of an anytime curve once ``spent`` forwards per sample were charged."""
    return min((loss for f, loss in curve if f <= spent + 1e-9), default=math.inf)


def demo_row(source, k: int, b: int, rule: str, efforts: list[str], curve_cap: float) -> dict:
    """The default as ``budcache search`` runs it at its cap and at ``curve_cap``, then the other efforts."""

    def make():
        return Evaluator(source.batches("calib"), source.solver, rule=rule)

    out = {}
    for cap in (None, curve_cap):
        evaluate, start = make(), time.perf_counter()
        plan, result = search_plan(
            evaluate,
            b,
            reuse=source.reuse,
            config=dataclasses.replace(EFFORTS["default"], max_forwards=cap),
            euler_sigmas=source.fewer(b),
            progress=False,
        )
        out["default" if cap is None else "default_curve"] = {
            "loss": result.loss,
            "mask": text(result.mask),
            "forwards_per_sample": round(plan.record.spent, 1),
            "cap": plan.record.cap,
            "masks": evaluate.evaluations,
            "seconds": round(time.perf_counter() - start, 1),
            "curve": thin(result.curve),
        }
    searched = out["default"]["curve"][-1][0]
    out["nested"] = best_within(out["default_curve"]["curve"], searched) == out["default"]["loss"]
    for name in efforts:
        if name != "default":
            evaluate, start = make(), time.perf_counter()
            result = run_search(evaluate, b, EFFORTS[name], progress=False)
            out[name] = {
                "loss": result.loss,
                "mask": text(result.mask),
                "forwards_per_sample": round(result.spent, 1),
                "masks": evaluate.evaluations,
                "seconds": round(time.perf_counter() - start, 1),
                "curve": thin(result.curve),
            }
    return out


def held_out_psnr(source, full: torch.Tensor, rule: str, masks: dict[str, str]) -> dict[str, float]:
    """PSNR of each mask's held-out outputs against full compute (``full``, computed once per source)."""
    return {
        name: round(psnr(static_outputs(source, "eval", source.solver, [int(c == "#") for c in m], rule), full), 3)
        for name, m in masks.items()
    }


def gmm_rows(budgets: list[int], seeds: int, caps: list[float], efforts: list[str]) -> list[dict]:
    """The default on the Gaussian mixture run once to the largest cap, read at every cap (nested), against
    the exhaustive optimum; the other efforts uncapped."""
    gmm, sigmas = GaussianMixtureFlow(), [float(s) for s in linear_sigmas(20)]
    rows = []
    for b in budgets:
        for seed in range(seeds):
            noise = gmm.noise(64, seed)

            def make():
                return Evaluator([Batch(OutputDenoiser(gmm), part) for part in noise.split(8)], linear_sigmas(20))

            optimum, mask = euler_optimum(gmm, noise, sigmas, b)
            evaluate = make()
            optimum = min(optimum, evaluate(mask))  # the evaluator's own arithmetic
            result = run_search(
                make(), b, dataclasses.replace(EFFORTS["default"], max_forwards=max(caps)), progress=False
            )
            row = {
                "model": "gmm",
                "K": 20,
                "B": b,
                "rule": "repeat",
                "seed": seed,
                "best_known": optimum,
                "optimum_mask": text(mask),
                "default_curve": {"curve": thin(result.curve)},
            }
            for cap in caps:
                loss = best_within(result.curve, cap)
                row[f"default@{cap:g}"] = {"loss": loss, "ratio": round(loss / optimum, 4), "cap": cap}
            for name in efforts:
                if name != "default":
                    r = run_search(make(), b, EFFORTS[name], progress=False)
                    row[name] = {
                        "loss": r.loss,
                        "ratio": round(r.loss / optimum, 4),
                        "forwards_per_sample": round(r.spent, 1),
                        "curve": thin(r.curve),
                    }
            rows.append(row)
            print(
                json.dumps(
                    {k: v for k, v in row.items() if k != "default_curve"}
                    | {n: {f: x for f, x in v.items() if f != "curve"} for n, v in row.items() if isinstance(v, dict)}
                ),
                flush=True,
            )
    return rows


def pipeline_rows(prompts: int, efforts: list[str]) -> list[dict]:
    """The default against the other efforts on the tiny FLUX pipeline (K=28, B=10, guidance-distilled, one call per
    step), through ``budcache.search``: forwards per prompt and the objective's ratio to the best of them."""
    torch.manual_seed(0)
    pipe = tiny_flux_pipeline()
    inputs = [
        dict(prompt_embeds=torch.randn(1, 8, 32), pooled_prompt_embeds=torch.randn(1, 32)) for _ in range(prompts)
    ]
    calib = budcache.calibrate(pipe, inputs, 28, progress=False, height=16, width=16)
    rows = []
    for rule in ("repeat", "extrapolate"):
        found = {}
        for name in dict.fromkeys(["default", *efforts]):
            start = time.perf_counter()
            plan = budcache.search(calib, 10, rule=rule, config=EFFORTS[name], progress=False)
            found[name] = {
                "loss": plan.record.objective,
                "forwards_per_prompt": round(plan.record.forwards / prompts, 1),
                "cap": plan.record.cap,
                "masks": plan.record.evaluations,
                "seconds": round(time.perf_counter() - start, 1),
            }
        best = min(v["loss"] for v in found.values())
        rows.append(
            {
                "model": "tiny FLUX pipeline",
                "K": 28,
                "B": 10,
                "rule": rule,
                "prompts": prompts,
                "best_known": best,
                **{n: {**v, "ratio": round(v["loss"] / best, 4)} for n, v in found.items()},
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def plot(rows: list[dict], path: Path) -> None:
    panels = [r for r in rows if r["model"] == "demo"] + [r for r in rows if r["model"] == "gmm" and r["seed"] == 0]
    if not panels:  # e.g. only the tiny FLUX pipeline: no curves to draw
        return
    cols = 4
    fig = Figure(figsize=(3.6 * cols, 3.0 * ((len(panels) + cols - 1) // cols)))
    axes = fig.subplots((len(panels) + cols - 1) // cols, cols, squeeze=False).ravel()
    for ax, row in zip(axes, panels):
        for name, run in row.items():
            if isinstance(run, dict) and "curve" in run and run["curve"]:
                xs, ys = zip(*run["curve"])
                label = "default (to the curve cap)" if name == "default_curve" else name
                if name != "default":
                    ax.step(xs, [y / row["best_known"] for y in ys], where="post", label=label)
        cap = default_cap(row["K"], row["B"])
        ax.axvline(cap, color="grey", lw=0.8, ls=":")
        ax.axhline(1.02, color="grey", lw=0.6, ls="--")
        ax.set_xscale("log")
        ax.set_ylim(0.99, 2.0)
        ax.set_title(f"{row['model']} K={row['K']} B={row['B']} {row['rule']}", fontsize=9)
        ax.set_xlabel("forwards per sample (dotted: default cap)")
        ax.set_ylabel("best / best known")
        ax.legend(fontsize=7)
    for ax in axes[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def gpu_rows(a: argparse.Namespace) -> list[dict]:
    """Calibration + search at real scale (``--gpu``): FLUX.1-dev at 1024x1024 (K=28, B=10) and Wan2.1-1.3B at
    480x832 (K=50, B=20; ``--wan-frames``), random bf16 weights built from the published configs
    (``bench/real_scale.py``), ``--gpu-prompts`` prompts, the ``--efforts`` through ``budcache.calibrate`` +
    ``budcache.search``. The time outside transformer forwards is the search's wall time minus its forwards times
    the time of one full-compute step (a full generation / K, measured first)."""
    import real_scale

    device = torch.device("cpu" if a.tiny else "cuda")
    dtype = torch.float32 if a.tiny else torch.bfloat16
    rows = []
    for build in (real_scale.flux, lambda *args: real_scale.wan(*args, frames=a.wan_frames)):
        case = build(device, dtype, a.tiny)
        with torch.no_grad():
            case.run()  # warm-up
            real_scale.sync()
            start = time.perf_counter()
            case.run()
            real_scale.sync()
            step_s = (time.perf_counter() - start) / case.steps
            prompts = [case.prompt(i) for i in range(a.gpu_prompts)]
            start = time.perf_counter()
            calib = budcache.calibrate(case.pipe, prompts, case.steps, progress=False, **case.call)
            real_scale.sync()
            calibrate_s = time.perf_counter() - start
        for name in a.efforts:
            start = time.perf_counter()
            plan = budcache.search(calib, case.budget, config=EFFORTS[name], progress=False)
            real_scale.sync()
            search_s = time.perf_counter() - start
            forwards = plan.record.forwards  # summed over the prompts
            row = {
                "model": case.name,
                "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                "K": case.steps,
                "B": case.budget,
                "prompts": a.gpu_prompts,
                "effort": name,
                "step_s": round(step_s, 4),
                "calibrate_s": round(calibrate_s, 1),
                "search_s": round(search_s, 1),
                "total_min": round((calibrate_s + search_s) / 60, 2),
                "forwards_per_prompt": round(forwards / a.gpu_prompts, 1),
                "outside_forwards_share": round(1 - forwards * step_s / search_s, 4),
                "mask": "".join("#" if m else "." for m in plan.mask),
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budgets", type=int, nargs="+", default=[6, 8, 10])
    p.add_argument("--calib", type=int, default=32)
    p.add_argument(
        "--efforts",
        nargs="+",
        choices=list(EFFORTS),
        default=["default", "thorough"],
        help="the efforts to run (thorough: about 40 min at K=28 here; long: about an hour)",
    )
    p.add_argument("--curve-cap", type=float, default=1000, help="the default's anytime curve runs to this cap")
    p.add_argument("--k50", action="store_true", help="also K=50, B in {14, 20} (with --k50-calib samples)")
    p.add_argument("--k50-calib", type=int, default=16)
    p.add_argument("--skip-k28", action="store_true")
    p.add_argument("--held-out", action="store_true", help="held-out PSNR of the default's and the best plans")
    p.add_argument("--skip-demo", action="store_true")
    p.add_argument(
        "--pipeline-prompts",
        type=int,
        default=0,
        help="also the tiny FLUX pipeline with this many prompts (forwards per prompt)",
    )
    p.add_argument("--gmm-seeds", type=int, default=10)
    p.add_argument("--gmm-caps", type=float, nargs="+", default=[default_cap(20, 6), 1000])
    p.add_argument(
        "--reference",
        type=Path,
        nargs="*",
        default=[],
        help="earlier outputs of this benchmark whose runs count too (best-known objectives, curves)",
    )
    p.add_argument(
        "--gpu",
        action="store_true",
        help="only the real-scale timing on a CUDA GPU (FLUX.1-dev, Wan2.1-1.3B; random bf16 weights)",
    )
    p.add_argument(
        "--tiny", action="store_true", help="with --gpu: a CPU smoke run on tiny configs (no figure of value)"
    )
    p.add_argument("--gpu-prompts", type=int, default=16)
    p.add_argument("--wan-frames", type=int, default=33, help="with --gpu: Wan2.1 frames (4n+1)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("bench-out/search_cost.json"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.gpu:
        if not a.tiny and not torch.cuda.is_available():
            sys.exit("--gpu needs a CUDA GPU (none found); add --tiny for a CPU smoke run of the harness")
        rows = gpu_rows(a)
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.with_name(a.out.stem + "_gpu.json").write_text(json.dumps({"rows": rows}, indent=1))
        return
    known: dict[tuple, dict] = {}  # (K, B, rule) -> the reference runs of that demo setting
    for path in a.reference:
        for r in json.loads(path.read_text())["rows"]:
            if r["model"] == "demo":
                runs = {
                    n: v
                    for n, v in r.items()
                    if isinstance(v, dict) and "mask" in v and n not in ("default", "default_curve")
                }
                known.setdefault((r["K"], r["B"], r["rule"]), {}).update(runs)
    settings = (
        []
        if a.skip_demo
        else ([] if a.skip_k28 else [(28, a.calib, b) for b in a.budgets])
        + ([(50, a.k50_calib, 14), (50, a.k50_calib, 20)] if a.k50 else [])
    )
    rows = []
    for k, n, b in settings:
        with demo_source(k, n, validation=0, held_out=100 if a.held_out else 0) as source:
            full = static_outputs(source, "eval", source.solver, [1] * k, "repeat") if a.held_out else None
            for rule in ("repeat", "extrapolate"):
                runs = {**known.get((k, b, rule), {}), **demo_row(source, k, b, rule, a.efforts, a.curve_cap)}
                best = min(v["loss"] for v in runs.values() if isinstance(v, dict))
                row = {
                    "model": "demo",
                    "K": k,
                    "B": b,
                    "rule": rule,
                    "calibration": n,
                    "best_known": best,
                    **{
                        name: {**v, "ratio": round(v["loss"] / best, 4)} if isinstance(v, dict) else v
                        for name, v in runs.items()
                    },
                }
                if a.held_out:
                    best_mask = min((v for v in runs.values() if isinstance(v, dict)), key=lambda v: v["loss"])["mask"]
                    row["held_out_psnr"] = held_out_psnr(
                        source, full, rule, {"default": row["default"]["mask"], "best known": best_mask}
                    )
                rows.append(row)
                print(
                    json.dumps(
                        {
                            f: {g: x for g, x in v.items() if g != "curve"} if isinstance(v, dict) else v
                            for f, v in row.items()
                        }
                    ),
                    flush=True,
                )
    if a.gmm_seeds:
        rows += gmm_rows(a.budgets, a.gmm_seeds, a.gmm_caps, a.efforts)
    if a.pipeline_prompts:
        rows += pipeline_rows(a.pipeline_prompts, [e for e in a.efforts if e != "long"])
    summary = {}
    for r in rows:
        key = f"{r['model']} K={r['K']} B={r['B']} {r['rule']}"
        for name, v in r.items():
            if isinstance(v, dict) and "ratio" in v:
                s = summary.setdefault(key, {}).setdefault(name, {"worst_ratio": 0.0, "most_forwards": 0.0})
                s["worst_ratio"] = max(s["worst_ratio"], v["ratio"])
                s["most_forwards"] = max(
                    s["most_forwards"], v.get("forwards_per_sample", v.get("forwards_per_prompt", v.get("cap", 0.0)))
                )
    print(json.dumps({"summary": summary}, indent=1))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"rows": rows, "summary": summary}, indent=1))
    plot(rows, a.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
