"""The budget frontier: plans for every budget in one run, each search warm-started from its
neighbour's plan (beside the effort's own starts) and sharing one evaluator (memo and prefix states)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from tqdm.auto import tqdm

from ..plan import CachePlan
from ..source import Source
from .config import SearchConfig
from .plan_search import search_source, source_evaluator


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


def search_frontier(
    source: Source,
    budgets: Sequence[int],
    config: SearchConfig = SearchConfig(),
    progress: bool = True,
    max_state_mb: float = 1024.0,
    rule: str = "repeat",
) -> tuple[dict[int, CachePlan], dict[str, int]]:
    """One plan per budget (ascending) on the source's calibration set under the reuse ``rule``; each
    search starts from the previous budget's plan grown by one step, and then from the effort's own
    starts as well (alone, the grown start gets caught in worse optima at some budgets); an
    interrupted search (Ctrl-C) ends the run with its plan. Returns the plans and the shared
    evaluator's ``evaluations`` and ``forwards``."""
    evaluate = source_evaluator(source, "calib", rule=rule, config=config, max_state_mb=max_state_mb)
    plans: dict[int, CachePlan] = {}
    previous = None
    for b in tqdm(sorted(budgets), desc="frontier", disable=not progress):
        start, own = None, config
        if previous is not None and previous.budget == b - 1:  # the grown plan, then the effort's own starts
            start, own = (
                grow(previous.mask),
                dataclasses.replace(config, starts=config.starts + 1, start=(config.start[0], *config.start)),
            )
        plan, _ = search_source(
            source, b, rule=rule, config=own, progress=False, start=start, evaluate=evaluate, fallback=False
        )  # the frontier draws plain sampling beside the plans
        plans[b] = previous = plan
        if plan.record.interrupted:
            break
    return plans, {"evaluations": evaluate.evaluations, "forwards": evaluate.forwards}
