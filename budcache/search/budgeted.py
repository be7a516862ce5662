"""The budget-first search: rank many starts cheaply, climb the best on a share of the calibration
set, confirm on all of it, then keep improving (a climb on every sample, kicks, annealing rounds)
until the cap is spent.

Few samples rank masks almost as all of them do on a trained model, whose per-sample errors are
alike; not where a few samples carry the loss (on the Gaussian mixture, the few samples that change
mode). So the first start is scored on every sample, and where its per-sample distances spread
little (coefficient of variation at most :data:`SPREAD`), starts are ranked, climbed and annealed on
the *low rung* (``SearchConfig.screen`` of the batches) and their local optima scored on every sample;
elsewhere everything is scored on every sample. A rung's local optimum can sit a few moves from the
whole set's, so the best plan is then climbed on every sample, unscreened. Where the samples are not
alike the *front* starts join the ranked ones (masks crowded at the start whose last steps reuse): there
a few samples that change mode carry the loss, and once every sample has chosen its mode the flow runs
straight (the Gaussian mixture's optima compute early and reuse to the end). Ranked on the trained demo,
where the rung is trusted, they cost a cap-limited search its progress (K=50, B=20, repeat: 1.28x
instead of 1.07x the best known).

Every phase spends from the run's ledger, and the order of evaluations does not depend on the cap, so
the search is anytime and nested: a larger cap continues the same search and never returns a worse plan.
"""

from __future__ import annotations

import math

from ..sampling.rules import decode, encode, rule_of
from .anneal import anneal
from .climb import climb
from .kicks import kicks
from .moves import Mask
from .starts import each_rule, named, pool, random_start
from .state import Run

SPREAD = 1.0  # the per-sample coefficient of variation up to which a few batches stand in for all (the trained
# demo model: 0.27-0.81 at K=28 and 50; the Gaussian mixture: 0.86-7.9, 25 of 30 cases above 1.4)
RULES_WITHIN = 2.0  # choosing the rule, the rules whose uniform mask scores within this factor of the best one's get
# the climbed plan tried under them (on the demo: repeat 3-10x behind extrapolate under every scheduler; the two
# extrapolations close)
ROUNDS = 64  # annealing rounds after the local search (an uncapped budgeted search ends after them)


def _leading_rule(run: Run, masks: list[Mask], rank) -> tuple[list[Mask], list[str]]:
    """The starts under the rule whose first start (the uniform mask) ranks best, and the rules ranking within
    :data:`RULES_WITHIN` of it (the climbed plans are tried under them, see :func:`switch`)."""
    first = masks[: len(run.config.choose)]  # the first start under each rule (see starts.pool)
    losses = dict(zip(first, rank.many(first, run.config.batch_candidates)))
    best = min(losses.values())
    leading = rule_of(min(first, key=losses.get))
    kept = [rule_of(m) for m in first if losses[m] <= RULES_WITHIN * best]
    return [m for m in masks if rule_of(m) == leading], kept


def switch(run: Run, rules: list[str]) -> None:
    """The best plan so far under each other rule, scored on every sample; climbed on where one is better.
    A start's rank under a rule says little about its climbed optimum under it (on the demo, extrapolate2 leads
    on the uniform mask and extrapolate after the climb), and one climb under each rule costs a capped search
    its progress: the climbed mask is carried across the rules instead."""
    mask, loss = run.track.best, run.track.best_loss
    others = [encode(decode(mask)[0], r) for r in rules if r != rule_of(mask)]
    run.track.many(others)
    if run.track.best_loss < loss:
        climb(run, run.track.best, run.track.best_loss)


def budgeted(run: Run) -> None:
    config, track, evaluate = run.config, run.track, run.evaluate
    run.phase("ranking starts")
    masks = pool(run)
    track(masks[0])  # a plan on every sample first: the search has one whatever its cap
    alike = evaluate.spreads.get(evaluate.schedule(masks[0]), math.inf) <= SPREAD
    if not alike and "front" not in config.start:
        masks = list(dict.fromkeys([*masks, *each_rule(run, named(run, "front"))]))
    low = run.rung(config.screen) if alike else None
    rank = low or track
    kept = []
    if config.choose:
        masks, kept = _leading_rule(run, masks, rank)

    def promote(mask, loss):
        """Climb on the low rung (each sweep's or descent step's improvement scored on every sample as
        well, so a cap reached mid-climb keeps it), then on the whole set screened by the rung."""
        if low is not None:
            mask, loss = climb(run, mask, loss, low, each=track)
            loss = track(mask)
        return climb(run, mask, loss, screen=low)

    scores = rank.many(masks, config.batch_candidates)
    order = sorted(range(len(masks)), key=lambda i: scores[i])
    if config.choose:
        track(masks[order[0]])  # a plan under the leading rule on every sample before the climbs
    for s, i in enumerate(order[: config.starts]):
        run.phase(f"climbing start {s + 1}/{min(config.starts, len(order))}")
        promote(masks[i], scores[i])
    if len(kept) > 1:
        switch(run, kept)
    run.phase("climbing on every sample")
    climb(run, track.best, track.best_loss)
    run.phase("kicks")
    kicks(run, config.kicks, promote, score=rank)
    for r in range(ROUNDS):
        run.phase(f"annealing round {r + 1}")
        first = track.best if r % 2 == 0 else random_start(run)
        promote(*anneal(run, first, config.iterations, rank))
