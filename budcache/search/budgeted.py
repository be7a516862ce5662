"""The budget-first search: rank many starts cheaply, climb the best on a share of the calibration
set, confirm on all of it, then keep improving (kicks, annealing rounds) until the cap is spent.

Few samples rank masks almost as all of them do on a trained model, but not on every objective (on
the Gaussian mixture a few samples that change mode dominate the loss). So the starts are first scored
on two disjoint *rungs* (``SearchConfig.screen`` of the batches each): where the two rank them alike
(Kendall's tau of at least :data:`AGREE`), climbing and annealing happen on one rung and only local
optima are scored on every sample; where they do not, everything is scored on every sample.

Every phase spends from the run's ledger, and the order of evaluations does not depend on the cap, so
the search is anytime and nested: a larger cap continues the same search and never returns a worse plan.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .anneal import anneal
from .climb import climb
from .kicks import kicks
from .moves import propose
from .run import Run
from .starts import pool, random_start

AGREE = 0.6  # the two rungs' rank agreement above which one rung stands in for the whole set
PROBE = 12  # random moves from the best start that the two rungs must rank alike
ROUNDS = 64  # annealing rounds after the local search (an uncapped budgeted search ends after them)


def concordance(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-a of two score lists (ties count 0; 1.0 for fewer than two items)."""
    pairs = [(i, j) for i in range(len(a)) for j in range(i + 1, len(a))]
    if not pairs:
        return 1.0
    sign = lambda x: (x > 0) - (x < 0)  # noqa: E731
    return sum(sign(a[i] - a[j]) * sign(b[i] - b[j]) for i, j in pairs) / len(pairs)


def reliable(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether two rungs rank the same masks alike (their finite scores)."""
    finite = [i for i in range(len(a)) if math.isfinite(a[i]) and math.isfinite(b[i])]
    return concordance([a[i] for i in finite], [b[i] for i in finite]) >= AGREE


def budgeted(run: Run) -> None:
    config, track = run.config, run.track
    run.phase("ranking starts")
    masks = pool(run)
    track(masks[0])  # a plan on every sample first: the search has one whatever its cap
    low, other = run.rung(config.screen), run.rung(config.screen, offset=1)
    if low is not None and other is not None and not {id(b) for b in low.batches} & {id(b) for b in other.batches}:
        a, b = low.many(masks, config.batch_candidates), other.many(masks, config.batch_candidates)
        scores = [x + y for x, y in zip(a, b)]
        best = masks[min(range(len(masks)), key=lambda i: scores[i])]
        probe = list(dict.fromkeys(m for m in (propose(best, run.free, run.rng, config.shift_prob, config.flip_prob,
                                                       run.flips) for _ in range(PROBE)) if m is not None))
        if not reliable(low.many(probe, config.batch_candidates), other.many(probe, config.batch_candidates)):
            low = None
    else:
        low = None
        scores = track.many(masks, config.batch_candidates)
    rank = low or track

    def promote(mask, loss):
        """Climb on the low rung, then on the whole set screened by it."""
        if low is not None:
            mask, loss = climb(run, mask, loss, low)
            loss = track(mask)
        return climb(run, mask, loss, screen=low)

    order = sorted(range(len(masks)), key=lambda i: scores[i])
    for s, i in enumerate(order[:config.starts]):
        run.phase(f"climbing start {s + 1}/{min(config.starts, len(order))}")
        promote(masks[i], rank(masks[i]))
    run.phase("kicks")
    kicks(run, config.kicks, low)
    for r in range(ROUNDS):
        run.phase(f"annealing round {r + 1}")
        first = track.best if r % 2 == 0 else random_start(run)
        promote(*anneal(run, first, config.iterations, rank))
