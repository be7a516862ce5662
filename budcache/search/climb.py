"""Hill climbing on the budget manifold: first-improvement sweeps, then steepest descent to a local optimum.

``objective`` is the run's tracker (the whole calibration set) or a rung (a share of it); with a
``screen`` evaluator (a smaller share) moves are first ranked there and only the best are scored on
the objective, so a move is taken only when the objective confirms it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from .evaluator import Evaluator
from .moves import Mask, moves, neighbours, split
from .state import Run


class Objective(Protocol):
    def __call__(self, mask: Mask) -> float: ...

    def many(self, masks: list[Mask], group: int = 1) -> list[float]: ...


def sweep(
    run: Run,
    mask: Mask,
    loss: float,
    objective: Objective,
    screen: Evaluator | None,
    each: Callable[[Mask], object] | None = None,
) -> tuple[Mask, float]:
    """First-improvement sweeps over the computed steps, the last first (their moves are the cheapest:
    the prefix before them is stored): each step's best move within ``reach`` (by the ``screen``
    evaluator, where it beats the current mask there) is scored on the objective and taken at once if
    it lowers the loss. Repeated until a sweep moves nothing; a sweep can move every step, a
    steepest-descent round one (far fewer rounds where the start is far from the optimum, e.g. at K=50).
    ``each`` is called with the mask after every B/4 moves taken and at the end of every sweep that moved it."""
    config, free = run.config, run.free
    every = max(1, run.budget // 4)  # accepted moves between calls of ``each`` within a sweep
    moved = True
    while moved:
        moved, taken = False, 0
        for i in reversed(split(mask, free)[0]):
            if mask[i] != 1:
                continue
            near = moves(mask, i, split(mask, free)[1], config.reach)
            if not near:
                continue
            scores = (screen or objective).many(near, config.batch_candidates)
            rough, move = min(zip(scores, near))
            if screen is not None and rough >= screen(mask):
                continue
            move_loss = objective(move)
            if move_loss < loss:
                mask, loss, moved, taken = move, move_loss, True, taken + 1
                if each is not None and taken % every == 0:
                    each(mask)
        if moved and each is not None and taken % every:
            each(mask)
    return mask, loss


def climb(
    run: Run,
    mask: Mask,
    loss: float,
    objective: Objective | None = None,
    screen: Evaluator | None = None,
    each: Callable[[Mask], object] | None = None,
) -> tuple[Mask, float]:
    """Steepest descent on ``objective`` (default: the tracker) over the swap/shift (and rule-flip)
    neighbourhood within ``config.reach``, to a local optimum (after sweeps, with
    ``config.sweep``); ``config.batch_candidates`` neighbours at a time share one batched forward. With a
    ``screen`` evaluator only the ``config.confirm`` neighbours it ranks best are scored on the objective.
    ``each`` is called with the mask after every sweep and every descent step that moved it (e.g. to
    score a climb on a rung on every sample as it goes, so that a cap reached mid-climb keeps its progress)."""
    config = run.config
    objective = objective or run.track
    if config.sweep:
        mask, loss = sweep(run, mask, loss, objective, screen, each)
    while True:
        candidates = neighbours(mask, run.free, run.flips, config.reach)
        if screen is not None and len(candidates) > config.confirm:
            ranked = sorted(zip(screen.many(candidates, config.batch_candidates), range(len(candidates))))
            candidates = [candidates[i] for _, i in ranked[: config.confirm]]
        scored = list(zip(objective.many(candidates, config.batch_candidates), candidates))
        if not scored:
            return mask, loss
        best_loss, best = min(scored)
        if best_loss >= loss:
            return mask, loss
        mask, loss = best, best_loss
        if each is not None:
            each(mask)
