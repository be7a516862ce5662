"""LeMiCa: the lexicographically minimax path of B computed steps over single-segment edge errors."""

from __future__ import annotations

from ..search.evaluator import Evaluator
from .masks import Mask, _check, _mask


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
        raise ValueError(
            f"no LeMiCa path 0 -> {last} through {budget} nodes over these edges; reachable budgets: {reach or 'none'}"
        )
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
