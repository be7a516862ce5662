"""A surrogate of the stage-1 objective from the teacher alone, and its exact optimum.

The teacher's stored trajectory gives, for every step i, the state before i and the cache entry
of step i. Starting there, the error of reusing over a segment (compute at i, reuse i+1..j-1) is
the distance at step j to the teacher's state: it needs reused calls only (the embedding and the
head under residual reuse), no block-stack execution; the ledger charges each
:data:`~.ledger.REUSED_CALL` of a forward. With ``extrapolate`` a segment also depends on the
previous computed step h (the rule reads two entries: the teacher's at h and i). The surrogate of
a mask is the sum of its segments' errors, and a dynamic program over the computed steps finds its
exact minimum with B of K steps. It ranks masks approximately (errors propagate and do not add
exactly): a search starts there where ``SearchConfig.start`` names it, and climbs on the true objective.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..sampling.loop import State, advance
from ..sampling.rules import history_depth
from .evaluator import Evaluator
from .ledger import REUSED_CALL


def _teacher_states(evaluate: Evaluator) -> list[list[State]]:
    """Per step k = 0..K, every batch's teacher state before step k (after it for k = K), from the
    evaluator's prefix store (recomputed, and counted, where the store dropped them)."""
    k_steps = evaluate.num_steps
    states = [[State(0, b.noise) for b in evaluate.batches]]
    for k in range(1, k_steps):
        stored = evaluate.states.get((1,) * k)
        if stored is None:
            stored = [
                advance(
                    b.denoiser, [s], evaluate.solver, True, ["repeat"], evaluate.depth, (k - 1) in evaluate.restarts
                )[0][0]
                for b, s in zip(evaluate.batches, states[-1])
            ]
            evaluate.root.ledger.charge(evaluate.samples / evaluate.root.samples)
            evaluate.root.forwards += evaluate.samples
            evaluate.root.from_scratch += evaluate.samples * k
        states.append(list(stored))
    states.append([State(k_steps, t) for t in evaluate.teacher])
    return states


@torch.no_grad()
def segment_errors(
    evaluate: Evaluator, rule: str, longest: int | None = None
) -> dict[tuple[int | None, int, int], float]:
    """``(h, i, j) -> error`` of computing at i and reusing i+1..j-1 (mean distance to the teacher at j
    per sample), for 0 <= i < j <= K; ``h`` is the previous computed step (``extrapolate``), or None
    where the rule reads one entry. Steps in ``evaluate.restarts`` cannot be reused over. ``longest``:
    only segments (and, for a two-entry rule, gaps i - h) of at most this many steps, so that the
    reused calls grow as K * longest^2 instead of K^3 / 6 (:func:`surrogate_mask` never crosses a
    longer gap)."""
    teacher = _teacher_states(evaluate)
    k_steps, solver, depth = evaluate.num_steps, evaluate.solver, history_depth([rule])
    two = depth >= 2
    errors: dict[tuple[int | None, int, int], float] = {}
    for i in range(k_steps):
        after_i = teacher[i + 1]  # the teacher computed step i from the same state: its entry is ours
        for h in list(range(max(0, i - (longest or i)), i)) if two and i > 0 else [None]:
            if i == k_steps - 1:
                errors[h, i, k_steps] = 0.0  # the last step computes: nothing is reused
                continue
            if h is not None and any(r in evaluate.restarts for r in range(h + 1, i + 1)):
                continue  # the cache restarts between h and i: h's entry is gone
            states = [
                State(
                    i + 1,
                    s.x,
                    (s.history[-1],) if h is None else (teacher[h + 1][b].history[-1], s.history[-1]),
                    s.solver,
                )
                for b, s in enumerate(after_i)
            ]
            errors[h, i, i + 1] = 0.0
            for j in range(i + 2, min(k_steps, i + (longest or k_steps)) + 1):
                if (j - 1) in evaluate.restarts:
                    break
                evaluate.root.ledger.charge(REUSED_CALL * evaluate.samples / evaluate.root.samples)
                evaluate.root.reused_calls += evaluate.samples
                states = [
                    advance(b.denoiser, [s], solver, False, [rule], depth)[0][0]
                    for b, s in zip(evaluate.batches, states)
                ]
                total = sum(
                    float(evaluate.distance(s.x.float(), t.x.float()).double().sum())
                    for s, t in zip(states, teacher[j])
                )
                errors[h, i, j] = total / evaluate.samples if math.isfinite(total) else math.inf
    return errors


def surrogate_mask(
    errors: dict[tuple[int | None, int, int], float], num_steps: int, budget: int, forced: Sequence[int] = ()
) -> list[int]:
    """The mask with ``budget`` computed steps (step 0 and ``forced`` among them) whose summed
    segment errors are smallest: an exact dynamic program over (previous, current) computed steps."""
    forced = set(forced) | {0}
    two = any(h is not None for h, _, _ in errors)
    # best[(h, i)] = (cost, path) over paths with c nodes ending ... h, i
    best: dict[tuple[int | None, int], tuple[float, tuple[int, ...]]] = {(None, 0): (0.0, (0,))}
    for _ in range(budget - 1):
        nxt: dict[tuple[int | None, int], tuple[float, tuple[int, ...]]] = {}
        for (h, i), (cost, path) in best.items():
            for j in range(i + 1, num_steps):
                if any(f in forced for f in range(i + 1, j)):
                    break  # a forced step cannot be skipped
                w = errors.get((h if two else None, i, j), math.inf)
                key = (i if two else None, j)
                if cost + w < nxt.get(key, (math.inf,))[0]:
                    nxt[key] = (cost + w, path + (j,))
        best = nxt
    final = [
        (cost + errors.get((h if two else None, i, num_steps), math.inf), path)
        for (h, i), (cost, path) in best.items()
        if not any(f > i for f in forced)
    ]
    if not final:
        raise ValueError(f"no mask of {budget} computed steps covers the forced steps {sorted(forced)}")
    _, path = min(final)
    return [1 if k in path else 0 for k in range(num_steps)]
