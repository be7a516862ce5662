"""Stage-1 search: which B of K steps compute, for the best final output at that budget."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..plan import CachePlan, SearchRecord, model_identity, uniform_mask
from .checkpoint import Checkpoint, identity
from .anneal import SearchConfig, SearchResult, anneal, check_budget, fixed_steps, neighbours
from .evaluator import METRICS, Batch, Evaluator, decode, encode
from .exhaustive import exhaustive

__all__ = [
    "METRICS", "Batch", "Evaluator", "SearchConfig", "SearchResult",
    "anneal", "check_budget", "decode", "fixed_steps", "encode", "exhaustive", "neighbours", "search_plan",
]


def _over_ranks(evaluate: Evaluator, *values: int) -> list[int]:
    """``values`` summed over the ranks of a distributed search (as they are otherwise)."""
    if not evaluate.distributed:
        return list(values)
    total = torch.tensor(values, dtype=torch.float64)
    torch.distributed.all_reduce(total)
    return [int(v) for v in total]


def search_plan(
    evaluate: Evaluator,
    budget: int,
    *,
    reuse: str,
    model: Any = None,
    config: SearchConfig = SearchConfig(),
    euler_sigmas: Sequence[float] | None = None,
    validation: Evaluator | None = None,
    store_sigmas: bool = True,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    start: Sequence[int] | None = None,
) -> tuple[CachePlan, SearchResult]:
    """Search a mask (under ``evaluate.rule``, or with per-step rules when ``config.rules``) and
    wrap it in a :class:`CachePlan` with its search record.

    ``euler_sigmas``: the B-step schedule of plain fewer-step Euler, scored as a reference.
    ``validation``: an evaluator on other samples; a predictive plan whose validation loss is
    not better than the same mask with ``repeat`` falls back to ``repeat``. ``checkpoint``: a file
    the evaluations are saved to as they come; ``resume`` continues from it (same final plan).
    ``start``: the first annealing start (e.g. a neighbouring budget's plan), else the uniform mask.
    """
    k = evaluate.num_steps
    check_budget(k, budget, config)
    saver = None
    if checkpoint is not None:
        ident = identity(evaluate, budget, config, model_identity(model) if model is not None else None)
        saver = Checkpoint(checkpoint, ident, config.checkpoint_every)
        if resume and Path(checkpoint).exists():
            saver.restore(evaluate)
    result = anneal(evaluate, budget, config, progress=progress, checkpoint=saver, start=start)
    evaluations = evaluate.evaluations
    samples, forwards = _over_ranks(evaluate, evaluate.samples, evaluate.forwards)
    rule, rules, objective = evaluate.rule, result.rules, result.loss
    repeat = encode(result.mask, "repeat")
    repeat_objective = evaluate(repeat)
    check = validation or evaluate
    v_plan = v_repeat = None
    if rule != "repeat" or rules is not None:
        v_plan, v_repeat = check(encode(result.mask, rules or rule)), check(repeat)
        if not v_plan <= v_repeat:  # never worse than plain repetition (inf/NaN included)
            rule, rules, objective = "repeat", None, repeat_objective
    record = SearchRecord(
        objective=objective,
        repeat_objective=repeat_objective,
        validation_objective=v_plan,
        validation_repeat_objective=v_repeat,
        metric=evaluate.metric,
        uniform_objective=evaluate(uniform_mask(k, budget)),
        euler_objective=None if euler_sigmas is None else evaluate.schedule_loss(euler_sigmas),
        teacher_steps=k,
        evaluations=evaluations,
        forwards=forwards,
        forwards_without_prefix_reuse=samples * (k + evaluations * budget),
        seed=config.seed,
        calibration_size=samples,
        seconds=round(result.seconds, 2),
        interrupted=result.interrupted,
    )
    plan = CachePlan(
        num_steps=k,
        budget=budget,
        mask=result.mask,
        reuse=reuse,
        rule=rule,
        rules=rules,
        sigmas=list(evaluate.sigmas) if store_sigmas else None,
        model=model_identity(model) if model is not None else {},
        record=record,
    )
    return plan, result
