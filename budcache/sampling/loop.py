"""The one cached loop (k-diffusion style): a short function over a denoiser and a solver.

At step k the velocity ``v[k]`` is computed where the mask says so and otherwise derived from
the cache by the step's reuse rule; the solver then moves the latent from ``sigma[k]`` to
``sigma[k+1]``: Euler ``x + (sigma[k+1] - sigma[k]) * v`` over a schedule, or a diffusers
scheduler's own step (:mod:`.solver`). Search, sampling, the comparison, TeaCache and alignment
all run this loop; :func:`advance` is its step, which also moves several trajectories through
one batched call.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .denoisers import Denoiser, OutputDenoiser, VelocityFn
from .rules import History, check_rules, history_depth, predict, remember
from .solver import Solver, as_solver, cat_states, model_sigma, split_state


@dataclass(frozen=True)
class State:
    """The sampler state before step ``step``: the latent, the cache entries of the last computed
    steps (as many as the reuse rules need) and the solver's state (a scheduler's history)."""

    step: int
    x: torch.Tensor
    history: History = ()
    solver: Any = None


@dataclass(frozen=True)
class StepInfo:
    """What the loop's ``callback`` sees after each step."""

    step: int
    sigma: float
    computed: bool
    velocity: torch.Tensor
    state: State  # after the step


def advance(
    denoiser: Denoiser,
    states: Sequence[State],
    solver: Solver | Sequence[float],
    compute: bool,
    rules: Sequence[str],
    depth: int,
    restart: bool = False,
) -> tuple[list[State], torch.Tensor]:
    """One cached step of every state in ``states`` (all at the same step) through one call of
    ``denoiser`` on their latents stacked along the batch; ``rules[i]`` is state i's reuse rule.
    A computed step keeps ``depth`` cache entries (``restart``: none from before it). Returns the
    new states and the velocity. ``solver``: a solver, or a schedule stepped by Euler; the model is
    told the step's sigma (or the solver's decoupled ``model_sigmas``), the rules extrapolate in sigma."""
    solver = as_solver(solver)
    k, sigmas = states[0].step, solver.sigmas
    told = model_sigma(solver, k)
    sizes = [s.x.shape[0] for s in states]
    one = len(states) == 1
    x = states[0].x if one else torch.cat([s.x for s in states])
    if compute:
        v, cache = denoiser.compute(x, told)
        caches = [cache] if one else cache.split(sizes)
        histories = [remember(s.history, sigmas[k], c, depth, restart) for s, c in zip(states, caches)]
    else:
        if not all(s.history for s in states):
            raise ValueError(f"step {k} reuses a cache but no earlier step computed; mask[0] must be 1")
        predicted = [predict(s.history, sigmas[k], r) for s, r in zip(states, rules)]
        v = denoiser.reuse(x, told, predicted[0] if one else torch.cat(predicted))
        histories = [s.history for s in states]
    blend = getattr(denoiser, "blend", None)
    if one:
        x_next, solver_state = solver.step(k, x, v, states[0].solver)
        x_next = x_next if blend is None else blend(x_next, sigmas[k + 1])
        return [State(k + 1, x_next, histories[0], solver_state)], v
    joint, joined = cat_states([s.solver for s in states], sizes)
    x_next, solver_state = solver.step(k, x, v, joint)
    x_next = x_next if blend is None else blend(x_next, sigmas[k + 1])
    moved = zip(x_next.split(sizes), histories, split_state(solver_state, joined, sizes))
    return [State(k + 1, xs, h, st) for xs, h, st in moved], v


def sample(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: Sequence[float] | torch.Tensor | Solver,
    mask: Sequence[int],
    rule: str | Sequence[str] = "repeat",
    *,
    restarts: Collection[int] = (),
    depth: int | None = None,
    start: State | None = None,
    callback: Callable[[StepInfo], None] | None = None,
    check_finite: bool = True,
) -> torch.Tensor:
    """The cached loop over ``sigmas`` (K+1 values, floats or a differentiable tensor: Euler; or a
    :class:`~budcache.sampling.solver.Solver` such as a diffusers scheduler's step) computing where
    ``mask[k] == 1``; reused steps follow ``rule`` (one for all steps, or one per step).

    ``restarts``: steps whose cache starts afresh (another expert: they must compute); ``depth``:
    cache entries kept (default: what the rules need); ``start``: resume from a state (its step
    onwards); ``callback(info)`` after every step; ``check_finite``: raise FloatingPointError on a
    non-finite latent."""
    solver = as_solver(sigmas)
    sigmas = solver.sigmas
    if len(mask) != len(sigmas) - 1:
        raise ValueError(f"mask has {len(mask)} steps but sigmas describe {len(sigmas) - 1}")
    rules = check_rules(rule, len(mask))
    depth = depth or history_depth(rules)
    state = start or State(0, x)
    for k in range(state.step, len(mask)):
        (state,), v = advance(denoiser, [state], solver, bool(mask[k]), [rules[k]], depth, k in restarts)
        if check_finite and not torch.isfinite(state.x).all():
            raise FloatingPointError(
                f"non-finite latent after step {k} (sigma {float(sigmas[k]):.4g}); check the model inputs and schedule"
            )
        if callback is not None:
            callback(StepInfo(k, sigmas[k], bool(mask[k]), v, state))
    return state.x


def euler(fn: VelocityFn, x: torch.Tensor, sigmas: Sequence[float]) -> torch.Tensor:
    """Plain Euler over ``sigmas``: every step computes."""
    return sample(OutputDenoiser(fn), x, sigmas, [1] * (len(sigmas) - 1))


def linear_sigmas(num_steps: int) -> list[float]:
    """``num_steps`` + 1 sigmas from 1 to 0, evenly spaced."""
    return torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64).tolist()
