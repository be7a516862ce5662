"""The budget frontier: plans for every budget in one run, each search warm-started from its
neighbour's plan, scored on held-out samples beside plain Euler and the uniform mask."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import metrics, plots
from .plan import CachePlan, uniform_mask
from .sampler import linear_sigmas, sample
from .search import Evaluator, SearchConfig, search_plan


def grow(mask: Sequence[int]) -> list[int]:
    """``mask`` with one more computed step: the middle of its longest run of reused steps."""
    runs, start = [], None
    for i, m in enumerate([*mask, 1]):
        if not m and start is None:
            start = i
        elif m and start is not None:
            runs.append((i - start, -start, start, i))
            start = None
    if not runs:
        raise ValueError("every step already computes")
    _, _, a, b = max(runs)
    out = list(mask)
    out[(a + b - 1) // 2] = 1
    return out


def search_frontier(evaluate: Evaluator, budgets: Sequence[int], config: SearchConfig, model=None,
                    progress: bool = True) -> dict[int, CachePlan]:
    """One plan per budget (ascending), sharing the evaluator's memo and prefix states; each search
    starts from the previous budget's plan grown by one step."""
    plans: dict[int, CachePlan] = {}
    previous = None
    for b in tqdm(sorted(budgets), desc="frontier", disable=not progress):
        start = grow(previous.mask) if previous is not None and previous.budget == b - 1 else None
        plan, _ = search_plan(evaluate, b, reuse="residual", model=model, config=config, progress=False, start=start,
                              euler_sigmas=linear_sigmas(b))
        plans[b] = previous = plan
    return plans


def demo_frontier(out: Path, budgets: Sequence[int], steps: int = 28, calibration: int = 16, held_out: int = 100,
                  config: SearchConfig = SearchConfig(), progress: bool = True) -> list[dict]:
    """``budcache frontier`` on the demo model: plans, ``frontier.json`` and ``frontier.png``."""
    from .demo.model import load_demo_model, unpack
    from .demo.problem import demo_batches, demo_denoisers, demo_inputs
    from .demo.run import HELD_OUT_SEED_OFFSET

    model = load_demo_model()
    noise, labels = demo_inputs(held_out, config.seed + HELD_OUT_SEED_OFFSET)
    rows = []
    with demo_denoisers(model, "residual") as make, torch.no_grad():
        evaluate = Evaluator(demo_batches(make, *demo_inputs(calibration, config.seed)), linear_sigmas(steps))
        plans = search_frontier(evaluate, budgets, config, model.transformer, progress)
        ref = unpack(sample(make(labels), noise, linear_sigmas(steps), [1] * steps))
        psnr = lambda x: metrics.psnr(unpack(x), ref)  # noqa: E731
        for b, plan in plans.items():
            plan.save(out / f"plan_B{b}.json")
            rows.append({"budget": b, "mask": plan.strip, "calibration_loss": plan.record.objective,
                         "budcache": psnr(sample(make(labels), noise, plan.sigmas, plan.mask)),
                         "uniform mask": psnr(sample(make(labels), noise, plan.sigmas, uniform_mask(steps, b))),
                         "plain Euler": psnr(sample(make(labels), noise, linear_sigmas(b), [1] * b))})
    (out / "frontier.json").write_text(json.dumps({"rows": rows, "evaluations": evaluate.evaluations,
                                                   "forwards": evaluate.forwards}, indent=1))
    plots.plot_frontier(rows, out / "frontier.png")
    return rows
