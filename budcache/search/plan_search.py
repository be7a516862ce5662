"""Searching a plan: the stage-1 search wrapped into a :class:`~budcache.plan.CachePlan`, on an
evaluator, on any model source, or on a calibrated pipeline (:func:`search`)."""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import torch

from ..calibration.capture import Calibration
from ..calibration.replay import pipeline_source
from ..checks import check_choice, check_int, check_type
from ..errors import SearchError
from ..plan import REUSE_MODES, CachePlan, SearchRecord, model_identity, uniform_mask
from ..sampling.rules import RULES, code_rule, encode
from ..sampling.solver import AB2, Solver, as_solver
from ..source import Source
from .checkpoint import Checkpoint, held, identity
from .config import CHOICE, SearchConfig, cap_of, check_budget, check_config, effort_name
from .evaluator import METRICS, Evaluator
from .history import plot_history
from .ledger import check_cap
from .run import run_search
from .state import SearchResult


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
    euler_sigmas: Sequence[float] | Solver | None = None,
    validation: Evaluator | None = None,
    store_sigmas: bool = True,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    start: Sequence[int] | None = None,
    boundary_ratio: float | None = None,
    begin_index: int = 0,
    announce: Callable[[str], None] | None = None,
    fallback: bool = True,
    sizes: Sequence[str] = (),
) -> tuple[CachePlan, SearchResult]:
    """Search a mask (under ``evaluate.rule``, or with per-step rules when ``config.rules``) and
    wrap it in a :class:`CachePlan` with its search record.

    Never worse than not caching: where plain B-step sampling with the same solver (``euler_sigmas``) is at
    least as good on the calibration set as the best cached plan found, the plan is that plain B-step
    schedule (``num_steps = budget``, every step computed; the record keeps the cached plan's loss and the
    verdict, and ``announce`` gets one line), unless ``fallback`` is False (comparisons that score plain
    sampling themselves) or the plan is for image-to-image calls (``begin_index``), where the verdict alone says so.

    ``euler_sigmas``: the B-step schedule of plain fewer-step Euler (or the solver's B steps), scored as a reference.
    ``validation``: an evaluator on other samples; a predictive plan whose validation loss is
    not better than the same mask with ``repeat`` falls back to ``repeat``. ``checkpoint``: a file
    the evaluations are saved to as they come, locked against other searches while this one runs;
    ``resume`` continues from it (same final plan).
    ``start``: the first start (e.g. a neighbouring budget's plan), else ``config.start``'s first.
    ``boundary_ratio``: the expert boundary the plan is for (two-expert pipelines). ``begin_index``:
    the step image-to-image calls start at (see :class:`CachePlan`). ``sizes``: the sizes of a calibration of
    several (recorded; the plan covers the shifts of its batches' schedules). ``announce``: where to write, before
    the first candidate, what the search will spend (:func:`cost_line`).

    The cap (``config.max_forwards``, or the strategy's default) covers the teacher, the search and the
    reference losses scored after it on the calibration set (``budget`` forwards per sample each are
    kept for them); a predictive rule's check on ``validation`` is spent on other samples.
    """
    k = evaluate.num_steps
    check_config(config)
    check_budget(k, budget, config)
    cap = cap_of(config, k, budget)
    reserve = reserve_of(config, budget, evaluate.rule, start, euler_sigmas is not None)
    check_cap(cap, k, budget, reserve)
    searched = dataclasses.replace(config, max_forwards=cap - reserve)
    _check_reference(evaluate)
    if announce is not None:
        announce(cost_line(evaluate, cap))
    saver = None
    if checkpoint is not None:
        ident = identity(evaluate, budget, config, model_identity(model) if model is not None else None)
        saver = Checkpoint(checkpoint, ident, config.checkpoint_every)
    with held(checkpoint):
        if checkpoint is not None and saver is not None and resume and Path(checkpoint).exists():
            saver.restore(evaluate)
        result = run_search(evaluate, budget, searched, progress=progress, checkpoint=saver, start=start)
        if math.isfinite(cap):  # the references may spend what was kept for them
            evaluate.ledger.limit += cap - cap_of(searched, k, budget)
        if saver is not None and not result.interrupted:
            saver.save(evaluate, finished=True)
    evaluations = evaluate.evaluations
    rule, rules, objective = result.rule or evaluate.rule, result.rules, result.loss
    # an interrupted search writes its plan at once (a scheduler's SIGKILL may follow its SIGTERM within
    # seconds): no reference losses, no validation of a predictive rule (a resume adds them)
    refer = not result.interrupted
    repeat = encode(result.mask, "repeat")
    repeat_objective = evaluate(repeat) if refer else None
    check = validation or evaluate
    v_plan = v_repeat = None
    if refer and (rule != "repeat" or rules is not None):
        v_plan, v_repeat = check(encode(result.mask, rules or rule)), check(repeat)
        if not v_plan <= v_repeat:  # never worse than plain repetition (inf/NaN included)
            assert repeat_objective is not None  # scored above (refer)
            rule, rules, objective = "repeat", None, repeat_objective
    uniform_objective = evaluate(encode(uniform_mask(k, budget), rule)) if refer else None
    tried = _rules_tried(evaluate, config.choose) if config.choose else None  # the plan's mask under repeat included
    plains = plain_losses(evaluate, as_solver(euler_sigmas)) if euler_sigmas is not None and refer else None
    euler_objective = None if plains is None else next(iter(plains.values()))
    verdict = None if euler_objective is None else "cached" if euler_objective > objective else "plain"
    plain = verdict == "plain" and fallback and begin_index == 0
    if verdict == "plain" and not plain:
        verdict = "plain, not applied"
    better = (
        [name for name, loss in plains.items() if loss <= objective]
        if verdict == "cached" and plains is not None
        else []
    )
    if better:
        verdict = f"cached, {better[0]} better"
    if verdict is not None and verdict != "cached" and announce is not None:
        # a verdict comes with plains, so with euler_sigmas and euler_objective
        assert plains is not None and euler_sigmas is not None and euler_objective is not None
        announce(
            plain_line(euler_sigmas, budget, euler_objective, objective, plain)
            if not better
            else better_line(budget, better[0], plains[better[0]], objective, euler_sigmas, euler_objective)
        )
    shifts = _shift_range(evaluate)
    samples, forwards, from_scratch, reused_calls = _over_ranks(
        evaluate, evaluate.samples, evaluate.forwards, evaluate.from_scratch, evaluate.reused_calls
    )
    record = SearchRecord(
        objective=cast(float, euler_objective) if plain else objective,  # plain: a verdict, so plains were scored
        repeat_objective=repeat_objective,
        validation_objective=v_plan,
        validation_repeat_objective=v_repeat,
        metric=evaluate.metric,
        uniform_objective=uniform_objective,
        euler_objective=euler_objective,
        plain_objectives=plains,
        teacher_steps=k,
        evaluations=evaluations,
        forwards=forwards,
        forwards_without_prefix_reuse=from_scratch,
        seed=config.seed,
        calibration_size=samples,
        seconds=round(result.seconds, 2),
        interrupted=result.interrupted,
        solver=evaluate.solver.name,
        effort=effort_name(config),
        cap=cap if math.isfinite(cap) else None,
        spent=round(evaluate.ledger.spent, 3),
        reused_calls=reused_calls,
        verdict=verdict,
        cached_objective=objective if plain else None,
        rules_tried=tried,
        sizes=list(sizes) or None,
        size_objectives=None if plain else evaluate.by_size.get(encode(result.mask, rules or rule)),
    )
    # the plain B-step schedule, every step computed, or the searched mask over the K-step schedule
    mask, sigmas = (
        ([1] * budget, [float(s) for s in as_solver(euler_sigmas).sigmas])
        if plain
        else (result.mask, list(evaluate.sigmas))
    )
    plan = CachePlan(
        num_steps=len(mask),
        budget=budget,
        mask=mask,
        reuse=reuse,
        rule="repeat" if plain else rule,
        rules=None if plain else rules,
        sigmas=sigmas if store_sigmas else None,
        schedule=sigmas if store_sigmas else None,
        shifts=shifts if store_sigmas else None,
        model=model_identity(model) if model is not None else {},
        boundary_ratio=boundary_ratio,
        record=record,
        begin_index=begin_index,
    )
    return plan, result


def _shift_range(evaluate: Evaluator) -> list[float] | None:
    """[low, high] of the calibration batches' schedule shifts (over every rank's), or None where all run the
    evaluator's own schedule."""
    shifts = [b.shift for b in evaluate.batches]
    low, high = min(shifts), max(shifts)
    if evaluate.distributed:
        ends = torch.tensor([low, -high], dtype=torch.float64)
        torch.distributed.all_reduce(ends, op=torch.distributed.ReduceOp.MIN)
        low, high = float(ends[0]), -float(ends[1])
    return None if low == high == 1.0 else [min(low, 1.0), max(high, 1.0)]


def _check_reference(evaluate: Evaluator) -> None:
    """Under ``torch.distributed``: every rank's schedule (its first calibration sample's) is the same, the reference
    the batches' shifts are taken from; refused before any search otherwise."""
    if not evaluate.distributed:
        return
    reference = torch.tensor(evaluate.sigmas, dtype=torch.float64)
    spread = torch.stack([reference, -reference])
    torch.distributed.all_reduce(spread, op=torch.distributed.ReduceOp.MAX)
    if float((spread[0] + spread[1]).abs().max()) > 1e-6:  # max - min of each sigma over the ranks
        raise SearchError(
            "the processes' calibration sets start at different sizes (schedules), so their shifts have different "
            "references; give every process the same first size (--sizes, or the same size first in each shard)"
        )


def reserve_of(
    config: SearchConfig, budget: int, rule: str, start: Sequence[int] | None = None, plain: bool = True
) -> int:
    """Forwards per sample the cap keeps for the losses scored after the search: plain sampling (the own solver and
    AB2), the uniform mask (unless the budgeted search scores it first) and a predictive plan under repeat."""
    predictive = rule != "repeat" or bool(config.rules) or any(r != "repeat" for r in config.choose)
    uniform_first = (
        config.strategy == "budgeted" and start is None and config.start[:1] == ("uniform",) and not config.choose
    )  # choosing, the uniform mask under the plan's rule may not be scored
    return budget * (2 * plain + (not uniform_first) + predictive)


def _rules_tried(evaluate: Evaluator, rules: Sequence[str]) -> dict[str, float]:
    """Each rule's best loss over the masks scored under it on every sample (a rule only ranked on a share of
    the samples is left out)."""
    best: dict[str, float] = {}
    for key, loss in evaluate.memo.items():
        codes = {c for c in key if c != 1}
        if len(codes) == 1 and (rule := code_rule(codes.pop())) in rules:
            best[rule] = min(best.get(rule, math.inf), loss)
    return {r: best[r] for r in rules if r in best}


def plain_line(fewer: Sequence[float] | Solver, budget: int, plain: float, cached: float, applied: bool) -> str:
    """One line: plain B-step sampling is at least as good as the best cached plan, and what the plan does."""
    what = (
        f"the plan runs {budget} plain steps (num_inference_steps={budget})"
        if applied
        else "the cached plan is kept as asked; running the pipeline with fewer steps is as good"
    )
    return (
        f"search: plain {budget}-step {as_solver(fewer).name} (loss {plain:.4g}) is at least as good as the best "
        f"cached plan found ({cached:.4g}): {what}"
    )


def plain_losses(evaluate: Evaluator, own: Solver) -> dict[str, float]:
    """Plain B-step sampling on the calibration set: with the pipeline's own solver (first) and with AB2 over the
    same sigmas (which a multistep cache rule resembles; the other solvers are in ``budcache compare``)."""
    return {
        own.name: evaluate.schedule_loss(own),
        **({} if own.name == AB2.name else {AB2.name: evaluate.schedule_loss(AB2(own.sigmas))}),
    }


def better_line(
    budget: int, name: str, loss: float, cached: float, own: Sequence[float] | Solver, own_loss: float
) -> str:
    """One line: a plain solver the pipeline does not run beats the cached plan, which is kept (it beats the
    pipeline's own plain B steps)."""
    return (
        f"search: plain {budget}-step {name} (loss {loss:.4g}) beats the best cached plan found ({cached:.4g}), "
        f"which beats the pipeline's own plain {budget}-step {as_solver(own).name} ({own_loss:.4g}) and is kept: "
        f"the pipeline's scheduler does not run {name}; a larger --max-forwards may find a better plan"
    )


def cost_line(evaluate: Evaluator, cap: float) -> str:
    """One line: the cap, the calibration samples, the forwards in all and the time they should take,
    projected from the teacher's measured time per forward."""
    samples = evaluate.samples
    per = evaluate.teacher_seconds / max(1, evaluate.num_steps * samples)
    if not math.isfinite(cap):
        return (
            f"search: no cap on forwards (this effort does not plan its spending), {samples} calibration "
            f"samples; {per * 1e3:.3g} ms per forward per sample: the time is not known in advance"
        )
    left = max(0.0, cap - evaluate.ledger.spent) * samples * per
    return (
        f"search: at most {cap:g} forwards per calibration sample x {samples} samples = {cap * samples:.0f} "
        f"forwards (teacher included); {per * 1e3:.3g} ms per forward per sample (the teacher's): at most "
        f"{_duration(left)} more"
    )


def _duration(seconds: float) -> str:
    return (
        f"{seconds:.0f} s"
        if seconds < 120
        else f"{seconds / 60:.1f} min"
        if seconds < 7200
        else f"{seconds / 3600:.1f} h"
    )


def source_evaluator(
    source: Source,
    which: str,
    *,
    rule: str = "repeat",
    config: SearchConfig = SearchConfig(),
    metric: str = "mse",
    max_state_mb: float = 1024.0,
) -> Evaluator:
    """An evaluator on one set of a model source (cache restarting at the source's restart steps)."""
    return Evaluator(
        source.batches(which),
        source.solver,
        metric,
        max_state_mb=max_state_mb,
        rule=rule,
        rules_in_play=(*config.rules, *config.choose),
        restarts=source.restarts,
    )


def search_source(
    source: Source,
    budget: int,
    *,
    rule: str = "repeat",
    config: SearchConfig = SearchConfig(),
    metric: str = "mse",
    max_state_mb: float = 1024.0,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    start: Sequence[int] | None = None,
    evaluate: Evaluator | None = None,
    announce: Callable[[str], None] | None = None,
    fallback: bool = True,
) -> tuple[CachePlan, SearchResult]:
    """Search the best ``budget``-of-K plan on a model source's calibration set. The source's
    restart steps always compute; a predictive rule must beat ``repeat`` on its validation set
    (else on the calibration set); plain B-step sampling at least as good gives a plain plan unless
    ``fallback`` is False (see :func:`search_plan`). ``evaluate``: an evaluator of this source to reuse (frontier).
    The ``checkpoint`` is locked before the teacher runs (a second search on it is refused first)."""
    check_config(config)
    check_budget(source.num_steps, budget, config)
    config = dataclasses.replace(config, forced=tuple(sorted({*config.forced, *source.restarts})))
    with held(checkpoint):
        if evaluate is None:
            evaluate = source_evaluator(
                source, "calib", rule=rule, config=config, metric=metric, max_state_mb=max_state_mb
            )
            source.check_teacher(evaluate.teacher)
        predictive = evaluate.rule != "repeat" or bool(config.rules)
        validation = None
        if predictive and source.has("validation"):
            validation = source_evaluator(
                source, "validation", rule=evaluate.rule, config=config, metric=metric, max_state_mb=0
            )
        return search_plan(
            evaluate,
            budget,
            reuse=source.reuse,
            model=source.model,
            config=config,
            euler_sigmas=source.fewer(budget),
            validation=validation,
            progress=progress,
            checkpoint=checkpoint,
            resume=resume,
            start=start,
            boundary_ratio=source.boundary_ratio,
            begin_index=source.begin_index,
            announce=announce,
            fallback=fallback,
            sizes=source.sizes,
        )


def search(
    calib: Calibration,
    budget: int,
    *,
    reuse: str = "residual",
    rule: str | None = None,
    config: SearchConfig = SearchConfig(),
    validation: Calibration | None = None,
    metric: str = "mse",
    max_state_mb: float = 1024.0,
    history: str | Path | None = None,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    announce: Callable[[str], None] | None = None,
) -> CachePlan:
    """Search the best ``budget``-of-K plan for a calibrated pipeline (K = calibration steps).

    ``rule``: how reused steps read the cache (``repeat``, ``extrapolate``, ``extrapolate2``); None: the search
    chooses among them within its cap (``SearchConfig.choose``; the record keeps each one's best loss).
    Steps where the transformer calls change (e.g. the first step of Wan2.2's second expert)
    always compute, and the cache restarts there. ``validation``: other captures on which a
    predictive rule must beat ``repeat`` (default: the calibration ones). ``history``: where to
    plot the search history. ``checkpoint`` / ``resume``: save evaluations as they come and
    continue an interrupted search (see :func:`search_plan`). ``announce``: where the line on what the
    search will spend goes (default: standard error, with ``progress``).
    """
    check_type("calib", calib, Calibration, "a Calibration (budcache.calibrate(pipe, prompts, steps))")
    check_type("validation", validation, (Calibration, type(None)), "a Calibration or None")
    check_type("config", config, SearchConfig, "a SearchConfig")
    check_int("budget", budget, 1, calib.num_steps, SearchError)
    check_choice("reuse", reuse, REUSE_MODES, SearchError)
    check_choice("metric", metric, METRICS, SearchError)
    if rule is not None:
        check_choice("rule", rule, RULES, SearchError)
    if rule is None and not config.rules and not config.choose:
        config = dataclasses.replace(config, choose=CHOICE)
    check_config(config)
    k = calib.num_steps
    check_budget(k, budget, config)
    check_cap(cap_of(config, k, budget), k, budget, reserve_of(config, budget, rule or "repeat"))
    if announce is None and progress:
        announce = functools.partial(print, file=sys.stderr)
    with pipeline_source(calib, reuse, validation=validation) as source:
        plan, result = search_source(
            source,
            budget,
            rule=rule or "repeat",
            config=config,
            metric=metric,
            max_state_mb=max_state_mb,
            progress=progress,
            checkpoint=checkpoint,
            resume=resume,
            announce=announce,
        )
    if history is not None:
        plot_history({f"B={budget}": result}, history)
    return plan
