"""Reuse rules: what a reused step takes from the cache of the last computed steps.

``repeat`` takes the last computed entry (the paper's rule); ``extrapolate`` extends the last two
linearly in sigma; ``extrapolate2`` fits a quadratic through the last three. With fewer computed
steps a rule falls back to the highest order available. A *schedule* codes a plan per step:
1 computes, ``2 + RULES.index(rule)`` reuses with that rule.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

RULES = ("repeat", "extrapolate", "extrapolate2")
DEPTH = {"repeat": 1, "extrapolate": 2, "extrapolate2": 3}  # cache entries each rule reads
MARKS = {"repeat": ".", "extrapolate": "/", "extrapolate2": "^"}  # how `describe` draws a reused step

History = tuple[tuple[float, torch.Tensor], ...]  # (sigma, cache entry) of the last computed steps, newest last
Schedule = tuple[int, ...]


def check_rules(rules: str | Sequence[str], num_steps: int) -> list[str]:
    """One rule per step from a plan-wide rule or a per-step list."""
    rules = [rules] * num_steps if isinstance(rules, str) else list(rules)
    if len(rules) != num_steps:
        raise ValueError(f"{len(rules)} reuse rules for {num_steps} steps")
    bad = sorted(set(rules) - set(RULES))
    if bad:
        raise ValueError(f"unknown reuse rule(s) {bad}; choose from {RULES}")
    return rules


def history_depth(rules: Sequence[str]) -> int:
    """Cache entries to keep so that every rule in ``rules`` can be applied."""
    return max(DEPTH[r] for r in rules)


def predict(history: Sequence[tuple[float, torch.Tensor]], sigma: float, rule: str) -> torch.Tensor:
    """The cache entry for a reused step at ``sigma`` under ``rule`` (see the module docstring)."""
    if not history:
        raise ValueError("a reused step needs an earlier computed step; mask[0] must be 1")
    order = min(DEPTH[rule], len(history)) - 1
    if order == 0:
        return history[-1][1]
    if order == 1:
        (s0, c0), (s1, c1) = history[-2:]
        return c1 + ((sigma - s1) / (s1 - s0)) * (c1 - c0)
    (s0, c0), (s1, c1), (s2, c2) = history[-3:]
    w0 = (sigma - s1) * (sigma - s2) / ((s0 - s1) * (s0 - s2))
    w1 = (sigma - s0) * (sigma - s2) / ((s1 - s0) * (s1 - s2))
    w2 = (sigma - s0) * (sigma - s1) / ((s2 - s0) * (s2 - s1))
    return w0 * c0 + w1 * c1 + w2 * c2


def remember(
    history: Sequence[tuple[float, torch.Tensor]], sigma: float, cache: torch.Tensor, depth: int, restart: bool = False
) -> History:
    """The last ``depth`` cache entries after a computed step; earlier entries of another shape
    (the transformer's inputs changed) or before a ``restart`` (another expert) are dropped."""
    shape = getattr(cache, "shape", None)
    kept = () if restart else tuple(e for e in history if getattr(e[1], "shape", None) == shape)
    return (*kept, (sigma, cache))[-depth:]


def rule_code(rule: str) -> int:
    """The schedule code of a reused step that follows ``rule``."""
    return 2 + RULES.index(rule)


def code_rule(code: int, default: str = "repeat") -> str:
    """The rule of a schedule code (``default`` for a computed step)."""
    return default if code == 1 else RULES[code - 2]


def rule_of(schedule: Sequence[int], default: str = "repeat") -> str:
    """The rule of a schedule's first reused step (``default`` where none reuses)."""
    return next((code_rule(c) for c in schedule if c != 1), default)


def encode(mask: Sequence[int], rules: str | Sequence[str]) -> Schedule:
    """A schedule from a 0/1 mask and its rule(s)."""
    rules = check_rules(rules, len(mask))
    return tuple(1 if m else rule_code(r) for m, r in zip(mask, rules))


def decode(schedule: Sequence[int], default: str = "repeat") -> tuple[list[int], list[str]]:
    """(mask, per-step rules) of a schedule; computed steps carry ``default``."""
    return [1 if c == 1 else 0 for c in schedule], [code_rule(c, default) for c in schedule]
