"""Static masks of published caching baselines, for the same-NFE comparison.

Every function returns a 0/1 mask of ``num_steps`` steps (1 computes, 0 reuses) with
``mask[0] == 1``; the ``*_for_budget`` functions compute exactly ``budget`` steps where the
method can, else raise :class:`ValueError` naming the budgets it reaches (MagCache instead
falls back to the closest NFE below the budget, and says so). How reused steps read the cache
(``repeat``, TaylorSeer's first-order ``extrapolate``) is the sampler's reuse rule, not part of
the mask. The rules follow ``notes/baselines.md``. TeaCache, whose decisions are per sample and
online, is :mod:`.teacache`.
"""

from __future__ import annotations

import math

from ..plan import uniform_mask
from .fora import fora_for_budget, fora_mask
from .lemica import lemica_edge_weights, lemica_path
from .magcache import MAGCACHE_PRESETS, magcache_for_budget, magcache_mask, magcache_ratios
from .masks import Mask, _check
from .taylorseer import taylorseer_for_budget, taylorseer_mask

__all__ = [
    "MAGCACHE_PRESETS",
    "Mask",
    "fora_for_budget",
    "fora_mask",
    "lemica_edge_weights",
    "lemica_path",
    "magcache_for_budget",
    "magcache_mask",
    "magcache_ratios",
    "static_policies",
    "taylorseer_for_budget",
    "taylorseer_mask",
]


def static_policies(num_steps: int, budget: int) -> dict[str, Mask]:
    """The parameter-free masks at B of K: ``uniform``, ``FORA`` (only if an interval gives exactly
    B) and ``TaylorSeer`` (only if B >= its 3 warm-up steps)."""
    _check(num_steps, budget)
    out = {"uniform": uniform_mask(num_steps, budget)}
    interval = math.ceil(num_steps / budget)
    if math.ceil(num_steps / interval) == budget:
        out["FORA"] = fora_mask(num_steps, interval)
    if budget >= min(3, num_steps):
        out["TaylorSeer"] = taylorseer_for_budget(num_steps, budget)
    return out
