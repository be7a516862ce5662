"""MagCache: reuse while the accumulated residual-magnitude error stays below a threshold."""

from __future__ import annotations

from collections.abc import Collection, Sequence

import torch

from .masks import Mask, _check

# MagCache's published settings (threshold E, max skip K, retention R): FLUX E024K5R01, Wan2.1-1.3B
# E012K2R02, diffusers' MagCacheConfig defaults. The comparison scans the threshold to hit B.
MAGCACHE_PRESETS: dict[str, dict[str, float]] = {
    "flux": {"threshold": 0.24, "max_skip": 5, "retention": 0.1},
    "wan2.1-1.3b": {"threshold": 0.12, "max_skip": 2, "retention": 0.2},
    "diffusers": {"threshold": 0.06, "max_skip": 3, "retention": 0.2},
}


def magcache_ratios(residuals: Sequence[torch.Tensor]) -> list[float]:
    """MagCache's magnitude ratios from the cached quantity (residual or velocity, batch first) of
    every step of one full-compute run: gamma_k = mean over samples of ||r_k|| / ||r_{k-1}||
    (each sample flattened), gamma_0 = 1."""
    norms = [r.detach().double().flatten(1).norm(dim=1) for r in residuals]
    return [1.0] + [float((b / a.clamp_min(1e-30)).mean()) for a, b in zip(norms, norms[1:])]


def _resample(ratios: Sequence[float], num_steps: int) -> list[float]:
    """Nearest-index resampling, idx = round(i (L - 1) / (T - 1)) (as MagCache's ``nearest_interp``)."""
    ratios = [float(r) for r in ratios]
    if len(ratios) == num_steps:
        return ratios
    if num_steps == 1:
        return ratios[-1:]
    scale = (len(ratios) - 1) / (num_steps - 1)
    return [ratios[round(i * scale)] for i in range(num_steps)]


def _retained(num_steps: int, retention: float) -> int:
    """Steps computed before MagCache's rule starts: floor(R T + 0.5), at least step 0."""
    return max(1, int(retention * num_steps + 0.5))


def magcache_mask(
    ratios: Sequence[float],
    threshold: float,
    max_skip: int = 5,
    retention: float = 0.1,
    num_steps: int | None = None,
    force: Collection[int] = (),
) -> Mask:
    """MagCache's static mask (FLUX / diffusers variant). Steps k < floor(R T + 0.5) compute
    (step 0 always); then per step rho *= gamma_k, n += 1, E += |1 - rho|; the step is reused if
    E <= threshold and n <= max_skip, else computed and (rho, n, E) reset to (1, 0, 0). The last
    step is not forced. ``ratios`` is nearest-index resampled to ``num_steps`` (default: its
    length). ``force``: steps always computed (the official FLUX script's quirk is ``(11,)`` at
    28 steps)."""
    num_steps = len(ratios) if num_steps is None else num_steps
    _check(num_steps)
    gamma, start = _resample(ratios, num_steps), _retained(num_steps, retention)
    mask, rho, n, err = [1] * num_steps, 1.0, 0, 0.0
    for k in range(start, num_steps):
        rho *= gamma[k]
        n += 1
        err += abs(1 - rho)
        if err <= threshold and n <= max_skip and k not in force:
            mask[k] = 0
        else:
            rho, n, err = 1.0, 0, 0.0
    return mask


def _breakpoints(gamma: Sequence[float], start: int, max_skip: int) -> list[float]:
    """Every accumulated error E the rule can compare with the threshold (a reset at step s, then
    up to ``max_skip`` accumulations): the mask is constant between consecutive values."""
    values = set()
    for s in range(start - 1, len(gamma) - 1):
        rho, err = 1.0, 0.0
        for k in range(s + 1, min(s + max_skip, len(gamma) - 1) + 1):
            rho *= gamma[k]
            err += abs(1 - rho)
            values.add(err)
    return sorted(values)


def _thresholds(gamma: Sequence[float], start: int, max_skip: int) -> list[float]:
    """One threshold inside every interval on which the mask is constant (midpoints)."""
    cuts = _breakpoints(gamma, start, max_skip)
    ends = cuts[1:] + [cuts[-1] + 1.0] if cuts else []
    return [-1.0] + [(a + b) / 2 for a, b in zip(cuts, ends)]


def magcache_for_budget(
    ratios: Sequence[float],
    num_steps: int,
    budget: int,
    max_skip: int = 5,
    retention: float = 0.1,
    thresholds: Sequence[float] | None = None,
) -> tuple[Mask, dict]:
    """MagCache's mask with NFE == B: the smallest threshold that gives B (NFE is not monotone
    in it). ``thresholds=None`` scans every distinct mask exactly (one threshold per interval
    between the accumulated errors the rule can meet); else the given grid. If ``max_skip``
    cannot reach B, other max_skip in 2..K are tried, nearest to the given one first; if none
    reaches B, the largest reachable NFE below B (the given max_skip preferred).
    Returns ``(mask, info)``, info = threshold, max_skip, retention, exact."""
    _check(num_steps, budget)
    gamma, start = _resample(ratios, num_steps), _retained(num_steps, retention)
    skips = [max_skip] + sorted((s for s in range(2, num_steps + 1) if s != max_skip), key=lambda s: abs(s - max_skip))
    best: tuple[int, Mask, dict] | None = None
    for skip in skips:
        grid = _thresholds(gamma, start, skip) if thresholds is None else sorted(thresholds)
        for t in grid:
            mask = magcache_mask(gamma, t, skip, retention)
            info = dict(threshold=t, max_skip=skip, retention=retention, exact=sum(mask) == budget)
            if info["exact"]:
                return mask, info
            if sum(mask) < budget and (best is None or sum(mask) > best[0]):
                best = (sum(mask), mask, info)
    if best is None:
        raise ValueError(
            f"MagCache with retention={retention} computes at least {start} of {num_steps} steps; "
            f"budget {budget} is out of reach"
        )
    return best[1], best[2]
