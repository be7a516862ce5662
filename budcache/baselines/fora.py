"""FORA: compute every N-th step."""

from __future__ import annotations

import math

from ..plan import uniform_mask
from .masks import Mask, _check


def fora_mask(num_steps: int, interval: int) -> Mask:
    """FORA: compute at ``k % interval == 0`` (NFE = ceil(K / interval))."""
    _check(num_steps)
    if interval < 1:
        raise ValueError(f"interval must be >= 1, got {interval}")
    return [1 if k % interval == 0 else 0 for k in range(num_steps)]


def fora_for_budget(num_steps: int, budget: int) -> tuple[Mask, str]:
    """FORA at the smallest interval N with ceil(K / N) == B (the most even of those intervals);
    if no interval gives exactly B, the uniform mask (:func:`plan.uniform_mask`) instead.
    Returns ``(mask, note)``; the note says which of the two it is."""
    _check(num_steps, budget)
    interval = math.ceil(num_steps / budget)  # smallest N with ceil(K / N) <= B
    if math.ceil(num_steps / interval) == budget:
        return fora_mask(num_steps, interval), f"FORA interval {interval}"
    return uniform_mask(num_steps, budget), f"no FORA interval gives {budget} of {num_steps} steps; uniform mask"
