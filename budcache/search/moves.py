"""Masks on the budget manifold: the moves that keep ``sum(mask) == B`` and the structured masks.

A *swap* exchanges a computed step with a reused one (a *shift* is a swap with a neighbour); with
searched rules a *flip* changes one reused step's rule. Masks here are schedules (see
:mod:`budcache.sampling.rules`): 1 computes, any other code reuses by that code's rule.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from ..plan import uniform_mask
from ..sampling.rules import Schedule

Mask = Schedule


def swap(mask: Mask, i: int, j: int) -> Mask:
    """Computed step i becomes a reuse (taking j's rule), reused step j computes."""
    m = list(mask)
    m[i], m[j] = m[j], 1
    return tuple(m)


def split(mask: Mask, free: tuple[int, ...]) -> tuple[list[int], list[int]]:
    """The free steps that compute, and those that reuse."""
    return [i for i in free if mask[i] == 1], [j for j in free if mask[j] != 1]


def moves(mask: Mask, i: int, off: list[int], reach: int) -> list[Mask]:
    """The swaps of computed step i with the reused steps ``off`` at most ``reach`` steps away (0: any)."""
    return [swap(mask, i, j) for j in off if not reach or abs(i - j) <= reach]


def neighbours(mask: Mask, free: tuple[int, ...], flips: tuple[int, ...] = (), reach: int = 0) -> list[Mask]:
    """Every swap of a computed step with a reused step (both among the ``free`` steps; at most
    ``reach`` steps apart when ``reach`` > 0, so the neighbourhood grows as B, not K * B), and every
    rule flip of a reused step to one of the schedule codes ``flips``."""
    on, off = split(mask, free)
    out = [m for i in on for m in moves(mask, i, off, reach)]
    for j in off:
        out += [mask[:j] + (c,) + mask[j + 1 :] for c in flips if c != mask[j]]
    return out


def propose(
    mask: Mask, free: tuple[int, ...], rng: random.Random, shift_prob: float, flip_prob: float, flips: tuple[int, ...]
) -> Mask | None:
    """One random move: a flip (with ``flip_prob``, when rules are searched), else a shift to a free
    neighbour (with ``shift_prob``) or a swap with any reused step; None when no move exists."""
    on, off = split(mask, free)
    if not off:
        return None
    if flips and (not on or rng.random() < flip_prob):
        j = rng.choice(off)
        return mask[:j] + (rng.choice([c for c in flips if c != mask[j]] or [mask[j]]),) + mask[j + 1 :]
    if not on:
        return None
    i = rng.choice(on)
    if rng.random() < shift_prob:
        targets = [j for j in (i - 1, i + 1) if j in off]
        j = rng.choice(targets) if targets else rng.choice(off)
    else:
        j = rng.choice(off)
    return swap(mask, i, j)


def random_mask(k: int, b: int, fixed: list[int], free: tuple[int, ...], rng: random.Random) -> list[int]:
    picks = set(fixed) | set(rng.sample(free, b - len(fixed)))
    return [1 if i in picks else 0 for i in range(k)]


def endpoints_mask(k: int, b: int) -> list[int]:
    """B computed steps spread evenly over 0..K-1, the first and the last included."""
    picks = {round(i * (k - 1) / (b - 1)) for i in range(b)} if b > 1 else {0}
    return [1 if i in picks else 0 for i in range(k)]


def warped_mask(k: int, b: int, power: float, last: bool = True) -> list[int]:
    """B computed steps at ``(K - 1) (i / (B - 1)) ** power`` (the first and the last step included;
    power > 1 crowds them at the start, < 1 at the end), collisions moved to the next free step.
    ``last=False``: at ``K (i / B) ** power``, so that the last steps reuse (where the flow runs straight)."""
    if b == 1:
        return [1] + [0] * (k - 1)
    picks: list[int] = []
    for i in range(b):
        at = (k - 1) * (i / (b - 1)) ** power if last else k * (i / b) ** power
        p = max(round(at), picks[-1] + 1 if picks else 0)
        picks.append(min(p, k - b + i))
    return [1 if i in picks else 0 for i in range(k)]


def with_fixed(k: int, b: int, fixed: list[int], mask: Sequence[int] | None = None) -> list[int]:
    """The uniform mask (or ``mask``) with the fixed steps switched on, each taking the nearest free computed step."""
    mask = list(uniform_mask(k, b) if mask is None else mask)
    for f in fixed:
        if not mask[f]:
            j = min((j for j in range(k) if mask[j] and j not in fixed), key=lambda j: abs(j - f))
            mask[f], mask[j] = 1, 0
    return mask
