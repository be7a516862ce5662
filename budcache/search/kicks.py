"""Iterated local search: perturb the best mask by a few random moves and climb again."""

from __future__ import annotations

from .climb import climb
from .evaluator import Evaluator
from .moves import propose
from .run import Run


def kicks(run: Run, rounds: int, screen: Evaluator | None = None, size: int = 3) -> None:
    """``rounds`` times: ``size`` random moves from the tracker's best mask, then hill climbing (screened
    by ``screen``) on the whole calibration set."""
    config, track = run.config, run.track
    for _ in range(rounds):
        kicked = track.best
        for _ in range(size):
            kicked = propose(kicked, run.free, run.rng, config.shift_prob, config.flip_prob, run.flips) or kicked
        climb(run, kicked, track(kicked), screen=screen)
