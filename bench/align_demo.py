"""Stage 2 on the demo model at K=28, B in {6, 8, 10} (JSON).

For budcache's searched plan (repeat rule, 16 calibration samples) and for plain B-step Euler
(the teacher stays the 28-step run): validation MSE before and after alignment (32 validation
samples, which pick the kept schedule) and PSNR on 100 held-out samples that neither search nor
alignment saw. Goal (stage-2 issue): +1 dB at B=6, and never worse on validation.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from budcache.evaluation import metrics
from budcache.align import AlignConfig, align
from budcache.cli.options import DEMO_EFFORT
from budcache.demo.model import load_demo_model, unpack
from budcache.demo.problem import demo_batches, demo_denoisers, demo_inputs, demo_source
from budcache.source import HELD_OUT_SEED_OFFSET, VALIDATION_SEED_OFFSET
from budcache.plan import CachePlan
from budcache.evaluation.plots import plot_alignment
from budcache.sampling import linear_sigmas, sample
from budcache.search import Evaluator, search_plan, search_source

K = 28


@torch.no_grad()
def held_out_psnr(make, plan: CachePlan, sigmas, seed: int, n: int) -> float:
    noise, labels = demo_inputs(n, seed + HELD_OUT_SEED_OFFSET)
    full = sample(make(labels), noise, linear_sigmas(K), [1] * K)
    x = sample(make(labels), noise, sigmas, plan.mask, plan.step_rules)
    return metrics.psnr(unpack(x), unpack(full))


def joint(model, plan: CachePlan, aligned_row: dict, config: AlignConfig, held_out: int) -> dict:
    """One round of the joint search: re-search the mask under the aligned schedule (the teacher
    stays the 28-step run), then align again."""
    with demo_denoisers(model, "residual") as make:
        train = demo_batches(make, *demo_inputs(16, 0))
        validation = demo_batches(make, *demo_inputs(32, VALIDATION_SEED_OFFSET))
        evaluate = Evaluator(train, aligned_row["sigmas"], teacher_sigmas=linear_sigmas(K))
        searched, _ = search_plan(evaluate, plan.budget, reuse="residual", config=DEMO_EFFORT, progress=False)
        again, result = align(searched, train, validation, config, teacher_sigmas=linear_sigmas(K), progress=False)
        after = held_out_psnr(make, again, again.sigmas, 0, held_out)
    return {"budget": plan.budget, "method": "budcache plan, joint (re-searched under aligned sigmas, aligned again)",
            "mask": again.strip, "validation_mse_after": result.validation_loss[result.best_epoch],
            "held_out_psnr_after": round(after, 2), "kept_epoch": result.best_epoch}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--budgets", type=int, nargs="+", default=[6, 8, 10])
    p.add_argument("--epochs", type=int, default=AlignConfig.epochs)
    p.add_argument("--lr", type=float, default=AlignConfig.lr)
    p.add_argument("--held-out", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("bench-out/align_demo"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    model, config = load_demo_model(), AlignConfig(epochs=a.epochs, lr=a.lr)
    rows = []
    for b in a.budgets:
        with demo_source(K, 16, held_out=0, model=model) as source:
            plan, _ = search_source(source, b, config=DEMO_EFFORT, progress=False)
        euler = CachePlan(num_steps=b, budget=b, mask=[1] * b, sigmas=linear_sigmas(b))
        with demo_denoisers(model, "residual") as make:
            train = demo_batches(make, *demo_inputs(16, 0))
            validation = demo_batches(make, *demo_inputs(32, VALIDATION_SEED_OFFSET))
            for name, base, teacher in (("budcache plan", plan, None), (f"plain {b}-step Euler", euler, linear_sigmas(K))):
                aligned, result = align(base, train, validation, config, teacher_sigmas=teacher, progress=False)
                plot_alignment(aligned, result, a.out / f"B{b}_{name.split()[0]}.png")
                v0, v1 = result.validation_loss[0], result.validation_loss[result.best_epoch]
                before = held_out_psnr(make, base, base.sigmas, 0, a.held_out)
                after = held_out_psnr(make, base, aligned.sigmas, 0, a.held_out)
                rows.append({"budget": b, "method": name, "mask": base.strip, "validation_mse_before": v0,
                             "validation_mse_after": v1, "validation_gain_db": round(10 * math.log10(v0 / v1), 2),
                             "held_out_psnr_before": round(before, 2), "held_out_psnr_after": round(after, 2),
                             "kept_epoch": result.best_epoch, "sigmas": [round(s, 4) for s in aligned.sigmas]})
                print(json.dumps({k: v for k, v in rows[-1].items() if k != "sigmas"}), flush=True)
        rows.append(joint(model, plan, rows[-2], config, a.held_out))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "sigmas"}), flush=True)
    six = [r for r in rows if r["budget"] == 6 and r["method"] == "budcache plan"]
    result = {"rows": rows, "goals": {
        "gain_at_b6_db": six[0]["held_out_psnr_after"] - six[0]["held_out_psnr_before"] if six else None,
        "never_worse_on_validation": all(r["validation_mse_after"] <= r["validation_mse_before"]
                                         for r in rows if "validation_mse_before" in r)}}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "align_demo.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result["goals"], indent=1))


if __name__ == "__main__":
    main()
