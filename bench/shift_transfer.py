"""How much a plan loses at a schedule shift (resolution) it was not searched for.

Demo (K=28, B=10, Euler over linear sigmas shifted by s -> s*x / (1 + (s-1)*x), the shift FLUX's dynamic shifting
and SD3 apply): a plan searched at each shift, applied (its mask and rule) at every other one; the loss on the
target's calibration set against the plan searched there, and held-out PSNR to the target's K-step teacher.
``--pipeline``: the tiny FLUX pipeline at three resolutions (dynamic shifting: the mu of each token count),
calibration loss only. ``--mixed``: one plan searched on every shift (or size) together, against the plan each
shift's own search finds, on that shift's calibration set and held-out set. One JSON line per row.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import _root  # noqa: F401
import torch

from budcache.demo.problem import demo_source
from budcache.evaluation import metrics
from budcache.evaluation.compare import static_outputs
from budcache.sampling.rules import encode
from budcache.search.plan_search import search_source, source_evaluator


def demo_rows(shifts: list[float], steps: int, budget: int, calib: int, held_out: int) -> list[dict]:
    plans, rows = {}, []
    for s in shifts:
        with demo_source(steps, calib, held_out=0, shift=s) as source:
            plans[s], _ = search_source(source, budget, config=_choose(), progress=False, fallback=False)
    for target in shifts:
        with demo_source(steps, calib, held_out=held_out, shift=target) as source:
            evaluate = source_evaluator(source, "calib", config=_choose())
            teacher = static_outputs(source, "eval", source.solver, [1] * steps, "repeat")
            own = evaluate(encode(plans[target].mask, plans[target].rule))
            for searched, plan in plans.items():
                loss = evaluate(encode(plan.mask, plan.rule))
                x = static_outputs(source, "eval", source.solver, plan.mask, plan.rule)
                rows.append(
                    {
                        "model": "demo",
                        "K": steps,
                        "B": budget,
                        "searched_at": searched,
                        "applied_at": target,
                        "rule": plan.rule,
                        "loss": loss,
                        "ratio": round(loss / own, 3),
                        "psnr": round(metrics.psnr(x, teacher), 2),
                        "date": time.strftime("%Y-%m-%d"),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    return rows


def demo_mixed_rows(shifts: list[float], steps: int, budget: int, calib: int, held_out: int) -> list[dict]:
    """One plan searched on every shift together against each shift's own plan, on each shift's calibration set
    (the mixed plan's samples at that shift) and its held-out set."""
    with demo_source(steps, calib, held_out=0, shift=tuple(shifts)) as source:
        mixed, _ = search_source(source, budget, config=_choose(), progress=False, fallback=False)
    rows = []
    for target in shifts:
        with demo_source(steps, calib, held_out=0, shift=target) as source:
            own, _ = search_source(source, budget, config=_choose(), progress=False, fallback=False)
        with demo_source(steps, calib, held_out=held_out, shift=target) as source:
            evaluate = source_evaluator(source, "calib", config=_choose())
            teacher = static_outputs(source, "eval", source.solver, [1] * steps, "repeat")
            psnr = {
                name: metrics.psnr(static_outputs(source, "eval", source.solver, p.mask, p.rule), teacher)
                for name, p in (("own", own), ("mixed", mixed))
            }
            rows.append(_mixed_row("demo", steps, budget, shifts, target, mixed, own, evaluate, psnr))
    return rows


def _mixed_row(model, steps, budget, searched, target, mixed, own, evaluate, psnr) -> dict:
    loss = {name: evaluate(encode(p.mask, p.rule)) for name, p in (("own", own), ("mixed", mixed))}
    row = {
        "model": model,
        "K": steps,
        "B": budget,
        "mixed_over": searched,
        "applied_at": target,
        "mixed_rule": mixed.rule,
        "own_rule": own.rule,
        "mixed_mask": mixed.strip,
        "own_mask": own.strip,
        "loss_own": loss["own"],
        "loss_mixed": loss["mixed"],
        "ratio": round(loss["mixed"] / loss["own"], 3),
        **(
            {
                "psnr_own": round(psnr["own"], 2),
                "psnr_mixed": round(psnr["mixed"], 2),
                "psnr_delta": round(psnr["mixed"] - psnr["own"], 2),
            }
            if psnr
            else {}
        ),
        "effort": EFFORT,
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(row), flush=True)
    return row


def pipeline_mixed_rows(
    sizes: list[tuple[int, int]], steps: int, budget: int, prompts: int, held_out: int
) -> list[dict]:
    """The tiny FLUX pipeline: one plan searched on every size together (``calibrate(..., sizes=...)``) against
    each size's own plan, on that size's calibration captures and on held-out captures (other prompts and seeds)."""
    import budcache
    from budcache.calibration.replay import pipeline_source
    from tests.fixtures.tiny import tiny_flux_pipeline

    pipe = tiny_flux_pipeline()
    inputs, others = _flux_inputs(prompts, 0), _flux_inputs(held_out, 1)
    mixed = budcache.search(
        budcache.calibrate(pipe, inputs, steps, sizes=sizes, progress=False), budget, config=_choose(), progress=False
    )
    rows = []
    for size in sizes:
        calib = budcache.calibrate(pipe, inputs, steps, progress=False, height=size[0], width=size[1])
        own = budcache.search(calib, budget, config=_choose(), progress=False)
        held = budcache.calibrate(pipe, others, steps, seed=10_000, progress=False, height=size[0], width=size[1])
        with pipeline_source(calib, held_out=held) as source:
            evaluate = source_evaluator(source, "calib", config=_choose())
            teacher = static_outputs(source, "eval", source.solver, [1] * steps, "repeat")
            psnr = {
                name: metrics.psnr(static_outputs(source, "eval", source.solver, p.mask, p.rule), teacher)
                for name, p in (("own", own), ("mixed", mixed))
            }
            rows.append(
                _mixed_row(
                    "tiny FLUX",
                    steps,
                    budget,
                    ["x".join(map(str, s)) for s in sizes],
                    "x".join(map(str, size)),
                    mixed,
                    own,
                    evaluate,
                    psnr,
                )
            )
    return rows


def _flux_inputs(n: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [
        dict(prompt_embeds=torch.randn(1, 8, 32, generator=g), pooled_prompt_embeds=torch.randn(1, 32, generator=g))
        for _ in range(n)
    ]


EFFORT = "default"  # the named search effort of every search here (--effort)


def _choose():
    import dataclasses

    from budcache.search import EFFORTS
    from budcache.search.config import CHOICE

    return dataclasses.replace(EFFORTS[EFFORT], choose=CHOICE)


def pipeline_rows(sizes: list[tuple[int, int]], steps: int, budget: int, prompts: int) -> list[dict]:
    import budcache
    from budcache.calibration.replay import pipeline_source
    from tests.fixtures.tiny import tiny_flux_pipeline

    pipe = tiny_flux_pipeline()
    inputs = _flux_inputs(prompts, 0)
    calibs = {
        size: budcache.calibrate(pipe, inputs, steps, progress=False, height=size[0], width=size[1]) for size in sizes
    }
    plans = {size: budcache.search(calib, budget, progress=False) for size, calib in calibs.items()}
    rows = []
    for target, calib in calibs.items():
        with pipeline_source(calib) as source:
            evaluate = source_evaluator(source, "calib", config=_choose())
            own = evaluate(encode(plans[target].mask, plans[target].rule))
            for searched, plan in plans.items():
                loss = evaluate(encode(plan.mask, plan.rule))
                rows.append(
                    {
                        "model": "tiny FLUX",
                        "K": steps,
                        "B": budget,
                        "searched_at": "x".join(map(str, searched)),
                        "applied_at": "x".join(map(str, target)),
                        "mu_sigma1": round(calib.sigmas[1], 4),
                        "rule": plan.rule,
                        "loss": loss,
                        "ratio": round(loss / own, 3),
                        "date": time.strftime("%Y-%m-%d"),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shifts", type=float, nargs="+", default=[1.0, 1.5, 3.0])
    p.add_argument("--steps", type=int, default=28)
    p.add_argument("--budget", type=int, default=10)
    p.add_argument("--calib", type=int, default=16)
    p.add_argument("--held-out", type=int, default=100)
    p.add_argument("--pipeline", action="store_true", help="the tiny FLUX pipeline at 16x16, 16x32, 32x32 instead")
    p.add_argument(
        "--mixed",
        action="store_true",
        help="one plan searched on every shift (size) together against each one's own plan",
    )
    p.add_argument("--effort", default="default", help="the named search effort of every search (default: default)")
    p.add_argument("--out", type=Path, default=Path("bench-out/shift_transfer.jsonl"))
    a = p.parse_args()
    global EFFORT
    EFFORT = a.effort
    torch.set_num_threads(1)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    sizes = [(16, 16), (16, 32), (32, 32)]
    if a.mixed:
        rows = (
            pipeline_mixed_rows(sizes, 12, 4, 4, 8)
            if a.pipeline
            else demo_mixed_rows(a.shifts, a.steps, a.budget, a.calib, a.held_out)
        )
    else:
        rows = (
            pipeline_rows(sizes, 12, 4, 4)
            if a.pipeline
            else demo_rows(a.shifts, a.steps, a.budget, a.calib, a.held_out)
        )
    with a.out.open("a") as sink:
        sink.writelines(json.dumps(r) + "\n" for r in rows)


if __name__ == "__main__":
    main()
