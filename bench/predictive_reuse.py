"""Predictive reuse against repetition and against plain fewer-step solvers at the same NFE.

Prints JSON: for the demo model at K=28 and each budget B, every reuse rule (repeat,
extrapolate, extrapolate2, and rules searched per step) x {uniform, searched} mask x reuse
mode {output, residual}, and every plain B-step solver, with PSNR/MSE/SSIM against the full
K-step result on held-out samples (never the calibration ones). Goal: a searched mask with
predictive reuse beats the best plain B-step solver by >= 4 dB at B in {6, 8} and is best at
every B.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from budcache.demo.model import load_demo_model, unpack
from budcache.demo.problem import demo_denoisers, demo_inputs, demo_source
from budcache.evaluation import metrics
from budcache.plan import RULES, uniform_mask
from budcache.sampling import euler, linear_sigmas, sample
from budcache.sampling.plain import plain_solvers
from budcache.search import EFFORTS, search_source
from budcache.source import HELD_OUT_SEED_OFFSET

VARIANTS = {rule: (rule, ()) for rule in RULES} | {"per-step": ("repeat", RULES)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=28)
    p.add_argument("--budgets", type=int, nargs="+", default=[5, 6, 8, 10, 14])
    p.add_argument("--reuse", nargs="+", default=["output", "residual"])
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--calib", type=int, default=32)
    p.add_argument("--held-out", type=int, default=200)
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--starts", type=int, default=1)
    p.add_argument("--kicks", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("bench-out/predictive_reuse.json"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    model = load_demo_model()
    noise, labels = demo_inputs(a.held_out, HELD_OUT_SEED_OFFSET)
    velocity = lambda x, s: model(x, torch.tensor(s), labels)  # noqa: E731
    sigmas = linear_sigmas(a.steps)
    with torch.no_grad():
        ref = unpack(euler(velocity, noise, sigmas))
    score = lambda x: metrics.report(unpack(x), ref)  # noqa: E731
    results = {"config": {**vars(a), "out": str(a.out)}, "budgets": {}}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    for b in a.budgets:
        with torch.no_grad():
            row = {"plain": {name: score(x) for name, x in plain_solvers(velocity, noise, b).items()}}
        for reuse in a.reuse:
            for name in a.variants:
                rule, rules = VARIANTS[name]
                t = time.perf_counter()
                config = dataclasses.replace(
                    EFFORTS["annealed"], iterations=a.iterations, starts=a.starts, kicks=a.kicks, rules=rules
                )
                with demo_source(a.steps, a.calib, held_out=0, reuse=reuse, model=model) as source:
                    plan, _ = search_source(source, b, rule=rule, config=config, progress=False)
                with demo_denoisers(model, reuse) as make, torch.no_grad():
                    searched = sample(make(labels), noise, sigmas, plan.mask, plan.step_rules)
                    uniform = sample(make(labels), noise, sigmas, uniform_mask(a.steps, b), rule)
                row[f"{reuse}/{name}"] = {
                    "searched": {
                        **score(searched),
                        "mask": plan.strip,
                        "kept_rule": plan.rule,
                        "per_step_rules": plan.rules,
                    },
                    "uniform": score(uniform),
                    "search_seconds": round(time.perf_counter() - t, 1),
                }
                print(
                    f"B={b} {reuse}/{name}: searched {row[f'{reuse}/{name}']['searched']['psnr']:.2f} dB, "
                    f"uniform {row[f'{reuse}/{name}']['uniform']['psnr']:.2f} dB",
                    flush=True,
                )
        best_plain = max(row["plain"].items(), key=lambda kv: kv[1]["psnr"])
        best_plan = max(((k, v["searched"]) for k, v in row.items() if k != "plain"), key=lambda kv: kv[1]["psnr"])
        row["summary"] = {
            "best_plain": best_plain[0],
            "best_plain_psnr": best_plain[1]["psnr"],
            "best_plan": best_plan[0],
            "best_plan_psnr": best_plan[1]["psnr"],
            "margin_db": best_plan[1]["psnr"] - best_plain[1]["psnr"],
        }
        print(
            f"B={b}: best plan {best_plan[0]} {best_plan[1]['psnr']:.2f} dB vs best plain "
            f"{best_plain[0]} {best_plain[1]['psnr']:.2f} dB",
            flush=True,
        )
        results["budgets"][str(b)] = row
        a.out.write_text(json.dumps(results, indent=1))
    margins = {b: r["summary"]["margin_db"] for b, r in results["budgets"].items()}
    results["goals"] = {
        "margin_db": margins,
        "ge_4db_at_6_and_8": all(margins.get(str(b), float("-inf")) >= 4 for b in (6, 8) if str(b) in margins),
        "best_at_every_budget": all(m > 0 for m in margins.values()),
    }
    a.out.write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
