"""TaylorSeer: warm-up steps, then every N-th (reused steps extrapolate: the sampler's rule)."""

from __future__ import annotations

from .masks import Mask, _check


def taylorseer_mask(num_steps: int, interval: int, warmup: int = 3) -> Mask:
    """TaylorSeer's original schedule: steps 0..warmup-1, then warmup-1 + N, warmup-1 + 2N, ...
    (NFE = warmup + floor((K - warmup) / N) for K >= warmup)."""
    _check(num_steps)
    if interval < 1 or warmup < 1:
        raise ValueError(f"interval and warmup must be >= 1, got interval={interval}, warmup={warmup}")
    return [1 if k < warmup or (k - warmup + 1) % interval == 0 else 0 for k in range(num_steps)]


def _fill_gaps(mask: Mask, extra: int) -> Mask:
    """Turn ``extra`` reused steps into computed ones, each at the last step of the currently
    longest run of reused steps (the trailing run included; ties: the latest run)."""
    mask = list(mask)
    for _ in range(extra):
        runs, start = [], None  # (length, end) of every run of zeros
        for k, m in enumerate([*mask, 1]):
            if m == 0 and start is None:
                start = k
            elif m == 1 and start is not None:
                runs.append((k - start, k - 1))
                start = None
        mask[max(runs)[1]] = 1
    return mask


def taylorseer_for_budget(num_steps: int, budget: int, warmup: int = 3) -> Mask:
    """TaylorSeer at the smallest interval N with NFE <= B; the remaining B - NFE computed steps
    go, one at a time, to the last step of the longest run of reused steps (the trailing run
    counts; ties go to the latest run), so NFE == B. Reaches budgets min(warmup, K)..K."""
    _check(num_steps, budget)
    low = min(warmup, num_steps)
    if budget < low:
        raise ValueError(
            f"TaylorSeer with warmup={warmup} reaches budgets {low}..{num_steps} of {num_steps} steps, not {budget}"
        )
    interval = 1
    while sum(mask := taylorseer_mask(num_steps, interval, warmup)) > budget:
        interval += 1
    return _fill_gaps(mask, budget - sum(mask))
