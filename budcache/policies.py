"""Static masks of published caching baselines, for the same-NFE comparison.

Every function returns a 0/1 mask of ``num_steps`` steps (1 computes, 0 reuses) with
``mask[0] == 1``; the ``*_for_budget`` functions compute exactly ``budget`` steps where the
method can, else raise :class:`ValueError` naming the budgets it reaches (MagCache instead
falls back to the closest NFE below the budget, and says so). How reused steps read the cache
(``repeat``, TaylorSeer's first-order ``extrapolate``) is the sampler's reuse rule, not part of
the mask. The rules follow ``notes/baselines.md``.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

import torch

from .plan import uniform_mask
from .search.evaluator import Evaluator

Mask = list[int]


def _check(num_steps: int, budget: int | None = None) -> None:
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if budget is not None and not 1 <= budget <= num_steps:
        raise ValueError(f"budget must be in [1, num_steps={num_steps}], got {budget}")


def _mask(num_steps: int, computed: Collection[int]) -> Mask:
    return [1 if k in computed else 0 for k in range(num_steps)]


# -- FORA --------------------------------------------------------------------------------------
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


# -- TaylorSeer --------------------------------------------------------------------------------
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
        raise ValueError(f"TaylorSeer with warmup={warmup} reaches budgets {low}..{num_steps} of {num_steps} "
                         f"steps, not {budget}")
    interval = 1
    while sum(mask := taylorseer_mask(num_steps, interval, warmup)) > budget:
        interval += 1
    return _fill_gaps(mask, budget - sum(mask))


# -- MagCache ----------------------------------------------------------------------------------
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
        raise ValueError(f"MagCache with retention={retention} computes at least {start} of {num_steps} steps; "
                         f"budget {budget} is out of reach")
    return best[1], best[2]


# -- LeMiCa ------------------------------------------------------------------------------------
def lemica_edge_weights(evaluate: Evaluator, max_span: int | None = None) -> dict[tuple[int, int], float]:
    """LeMiCa's edge weights: w(i -> j), 0 <= i < j <= K-1, j - i <= ``max_span`` (default: no
    cap), is the evaluator's loss of the mask computing every step but i+1..j-1 (that single
    segment reuses step i's cache). Build the evaluator with ``metric="l1"`` for LeMiCa's weight.
    Masks run in an order that lets the evaluator's prefix reuse share their common prefixes."""
    k = evaluate.num_steps
    span = k - 1 if max_span is None else max_span
    weights = {}
    for i in range(k - 1):
        for j in range(i + 1, min(i + span, k - 1) + 1):
            weights[i, j] = float(evaluate([0 if i < s < j else 1 for s in range(k)]))
    return weights


def lemica_path(weights: dict[tuple[int, int], float], num_steps: int, budget: int) -> Mask:
    """LeMiCa's mask: the path 0 -> K-1 through exactly ``budget`` nodes (computed steps; the
    last step always computes) over the edges in ``weights`` whose edge weights, sorted in
    descending order, are lexicographically smallest (minimise the largest, then the second
    largest, ...). Exact DP: appending one weight to two sorted vectors keeps their order, so the
    best vector per (node, node count) extends to the optimum. Ties keep the earliest predecessor."""
    _check(num_steps, budget)
    incoming: dict[int, list[tuple[int, float]]] = {j: [] for j in range(num_steps)}
    for (i, j), w in sorted(weights.items()):
        if 0 <= i < j < num_steps:
            incoming[j].append((i, float(w)))
    # best[c][j]: (edge weights sorted descending, predecessor) of the best path 0 -> j with c nodes
    best: list[dict[int, tuple[tuple[float, ...], int]]] = [{}, {0: ((), -1)}]
    for c in range(2, budget + 1):
        layer = {}
        for j in range(1, num_steps):
            for i, w in incoming[j]:
                if i in best[c - 1]:
                    vec = tuple(sorted((*best[c - 1][i][0], w), reverse=True))
                    if j not in layer or vec < layer[j][0]:
                        layer[j] = (vec, i)
        best.append(layer)
    last = num_steps - 1
    if last not in best[budget]:
        reach = [c for c in range(1, num_steps + 1) if _reaches(incoming, num_steps, c)]
        raise ValueError(f"no LeMiCa path 0 -> {last} through {budget} nodes over these edges; "
                         f"reachable budgets: {reach or 'none'}")
    nodes, j = [], last
    for c in range(budget, 0, -1):
        nodes.append(j)
        j = best[c][j][1]
    return _mask(num_steps, set(nodes))


def _reaches(incoming: dict[int, list[tuple[int, float]]], num_steps: int, count: int) -> bool:
    """Whether some path 0 -> K-1 over the edges visits exactly ``count`` nodes."""
    layer = {0}
    for _ in range(count - 1):
        layer = {j for j in range(num_steps) if any(i in layer for i, _ in incoming[j])}
    return num_steps - 1 in layer


# -- convenience -------------------------------------------------------------------------------
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
