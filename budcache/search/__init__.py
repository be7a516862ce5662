"""Stage-1 search: which B of K steps compute, for the best final output at that budget."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..plan import CachePlan, SearchRecord, model_identity, uniform_mask
from .anneal import SearchConfig, SearchResult, anneal, check_budget, neighbours
from .evaluator import METRICS, Batch, Evaluator
from .exhaustive import exhaustive

__all__ = [
    "METRICS", "Batch", "Evaluator", "SearchConfig", "SearchResult",
    "anneal", "check_budget", "exhaustive", "neighbours", "search_plan",
]


def search_plan(
    evaluate: Evaluator,
    budget: int,
    *,
    reuse: str,
    model: Any = None,
    config: SearchConfig = SearchConfig(),
    euler_sigmas: Sequence[float] | None = None,
    store_sigmas: bool = True,
    progress: bool = True,
) -> tuple[CachePlan, SearchResult]:
    """Search a mask with SA + HC and wrap it in a :class:`CachePlan` with its search record.

    ``euler_sigmas``: the B-step schedule of plain fewer-step Euler, scored as a reference.
    """
    k = evaluate.num_steps
    check_budget(k, budget, config.forced_prefix)
    result = anneal(evaluate, budget, config, progress=progress)
    evaluations, forwards = evaluate.evaluations, evaluate.forwards
    record = SearchRecord(
        objective=result.loss,
        metric=evaluate.metric,
        uniform_objective=evaluate(uniform_mask(k, budget)),
        euler_objective=None if euler_sigmas is None else evaluate.schedule_loss(euler_sigmas),
        teacher_steps=k,
        evaluations=evaluations,
        forwards=forwards,
        forwards_without_prefix_reuse=evaluate.samples * (k + evaluations * budget),
        seed=config.seed,
        calibration_size=evaluate.samples,
        seconds=round(result.seconds, 2),
        interrupted=result.interrupted,
    )
    plan = CachePlan(
        num_steps=k,
        budget=budget,
        mask=result.mask,
        reuse=reuse,
        sigmas=list(evaluate.sigmas) if store_sigmas else None,
        model=model_identity(model) if model is not None else {},
        record=record,
    )
    return plan, result
