"""Simulated annealing on the budget manifold: random moves under a Metropolis rule.

The temperature falls geometrically from ``t_start`` to ``t_end`` and is relative to the current
loss: a move that worsens the loss by a fraction ``d`` is accepted with probability ``exp(-d / T)``.
"""

from __future__ import annotations

import math

from .climb import Objective
from .moves import Mask, propose
from .state import Run


def anneal(run: Run, current: Mask, iterations: int, objective: Objective | None = None) -> tuple[Mask, float]:
    """``iterations`` Metropolis proposals from ``current`` on ``objective`` (default: the tracker);
    returns the last accepted mask and its loss."""
    config, rng = run.config, run.rng
    objective = objective or run.track
    loss = objective(current)
    for it in range(iterations):
        temp = config.t_start * (config.t_end / config.t_start) ** (it / max(1, iterations - 1))
        cand = propose(current, run.free, rng, config.shift_prob, config.flip_prob, run.flips)
        if cand is None:
            continue
        c_loss = objective(cand)
        if c_loss <= loss or (
            math.isfinite(c_loss) and rng.random() < math.exp(-(c_loss - loss) / (temp * max(loss, 1e-30)))
        ):
            current, loss = cand, c_loss
    return current, loss
