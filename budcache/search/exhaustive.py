"""Exact stage-1 optimum for small K: every mask with ``mask[0] == 1`` and ``sum == B``.

Masks are visited in lexicographic order so consecutive ones share long prefixes, which the
evaluator's prefix store turns into a depth-first traversal of the mask tree.
"""

from __future__ import annotations

import itertools
import math
import time

from tqdm import tqdm

from .config import check_budget
from .evaluator import Evaluator
from .state import SearchResult


def exhaustive(evaluate: Evaluator, budget: int, progress: bool = True, max_masks: int = 2_000_000) -> SearchResult:
    k = evaluate.num_steps
    check_budget(k, budget)
    count = math.comb(k - 1, budget - 1)
    if count > max_masks:
        raise ValueError(f"{count} masks for K={k}, B={budget}: too many to enumerate (limit {max_masks})")
    start = time.perf_counter()
    best, best_loss, history = None, math.inf, []
    for rest in tqdm(
        itertools.combinations(range(1, k), budget - 1),
        total=count,
        desc=f"exhaustive B={budget}/{k}",
        disable=not progress,
        leave=False,
    ):
        mask = tuple(1 if i == 0 or i in rest else 0 for i in range(k))
        loss = evaluate(mask)
        if loss < best_loss:
            best, best_loss = mask, loss
        history.append((evaluate.evaluations, loss, best_loss))
    return SearchResult(mask=list(best), loss=best_loss, history=history, seconds=time.perf_counter() - start)
