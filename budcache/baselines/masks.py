"""What every static baseline shares: a mask is a list of 0/1 per step (1 computes), ``mask[0] == 1``."""

from __future__ import annotations

from collections.abc import Collection

Mask = list[int]


def _check(num_steps: int, budget: int | None = None) -> None:
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if budget is not None and not 1 <= budget <= num_steps:
        raise ValueError(f"budget must be in [1, num_steps={num_steps}], got {budget}")


def _mask(num_steps: int, computed: Collection[int]) -> Mask:
    return [1 if k in computed else 0 for k in range(num_steps)]
