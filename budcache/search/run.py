"""Running a search: the driver that runs a strategy in the context of :mod:`.state`.

A *strategy* is a function ``strategy(run)`` that spends forwards through ``run.track`` (the whole
calibration set, where the best plan is kept) and ``run.rung(share)`` (a share of it, for cheap
ranking) until it is done or the ledger raises :class:`~.ledger.Spent`. Its building blocks are
functions from a mask to a better one (``climb.climb``, ``anneal.anneal``, ``kicks.kicks``). One file
per strategy; ``SearchConfig.strategy`` names one (see :data:`~.config.STRATEGIES`).
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Callable, Sequence

from tqdm import tqdm

from ..errors import SearchError
from ..sampling.rules import decode, history_depth, rule_code, rule_of
from .budgeted import budgeted
from .checkpoint import Checkpoint
from .classic import classic
from .config import SearchConfig, auto_reach, cap_of, check_budget, check_config, fixed_steps
from .evaluator import Evaluator
from .ledger import Spent, check_cap
from .state import Run, SearchResult, Tracker

Strategy = Callable[[Run], None]


def _strategies() -> dict[str, Strategy]:
    return {"budgeted": budgeted, "classic": classic}


def run_search(
    evaluate: Evaluator,
    budget: int,
    config: SearchConfig = SearchConfig(),
    progress: bool = True,
    checkpoint: Checkpoint | None = None,
    start: Sequence[int] | None = None,
) -> SearchResult:
    """Run ``config.strategy`` within its cap (see :func:`~.config.cap_of`); ``start``: a first start
    mask; with a ``checkpoint`` the evaluations are saved as they come (see :mod:`.checkpoint`)."""
    k = evaluate.num_steps
    check_config(config)
    check_budget(k, budget, config)
    if config.choose and history_depth(config.choose) > evaluate.depth:
        raise SearchError(
            f"the evaluator keeps too few cache entries to choose among {', '.join(config.choose)}; "
            "build it with rules_in_play=SearchConfig.choose"
        )
    cap = cap_of(config, k, budget)
    check_cap(cap, k, budget)
    if config.reach is None:  # within a cap, single-step moves buy more (measured on the demo at K=50)
        config = dataclasses.replace(config, reach=1 if config.strategy == "budgeted" else auto_reach(k))
    evaluate.ledger.open(cap, teacher=k)
    fixed = fixed_steps(k, config)
    free = tuple(i for i in range(k) if i not in fixed)
    flips = tuple(rule_code(r) for r in dict.fromkeys((evaluate.rule, *config.rules))) if config.rules else ()
    start_time = time.perf_counter()
    total = round(evaluate.ledger.limit, 1) if math.isfinite(cap) else None
    interrupted = False
    with tqdm(
        total=total,
        desc=f"search B={budget}/{k}",
        disable=not progress,
        leave=False,
        unit="fwd/sample",
        bar_format=None if total else "{desc}: {postfix}",
    ) as bar:
        track = Tracker(evaluate, bar, checkpoint)
        run = Run(evaluate, budget, config, track, fixed, free, flips, random.Random(config.seed), start)
        try:
            _strategies()[config.strategy](run)
        except KeyboardInterrupt:
            interrupted = True
        except Spent:
            pass
        finally:
            if checkpoint is not None:
                checkpoint.save(evaluate)
    if track.best is None:
        if interrupted:
            raise KeyboardInterrupt("search interrupted before any mask was evaluated")
        raise SearchError(
            f"the cap of {cap:g} forwards per sample was spent before any mask was scored; raise --max-forwards"
        )
    mask, rules = decode(track.best, evaluate.rule)
    rule = rule_of(track.best, evaluate.rule) if config.choose else None
    return SearchResult(
        mask=mask,
        loss=track.best_loss,
        rules=rules if flips else None,
        rule=rule,
        history=track.history,
        seconds=time.perf_counter() - start_time,
        interrupted=interrupted,
        cap=cap,
        spent=evaluate.ledger.spent,
        curve=track.curve,
    )
