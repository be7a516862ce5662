"""Iterated local search: perturb the best mask by a few random moves and climb again."""

from __future__ import annotations

from collections.abc import Callable

from .moves import Mask, propose
from .state import Run


def kicks(
    run: Run,
    rounds: int,
    climb_from: Callable[[Mask, float], object],
    size: int = 3,
    score: Callable[[Mask], float] | None = None,
) -> None:
    """``rounds`` times: ``size`` random moves from the tracker's best mask, scored by ``score``
    (default: on every sample), then ``climb_from(mask, loss)``."""
    config, track = run.config, run.track
    for _ in range(rounds):
        kicked = track.best
        for _ in range(size):
            kicked = propose(kicked, run.free, run.rng, config.shift_prob, config.flip_prob, run.flips) or kicked
        climb_from(kicked, (score or track)(kicked))
