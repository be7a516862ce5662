"""The one cached Euler loop (k-diffusion style): a short function over a denoiser.

``x[k+1] = x[k] + (sigma[k+1] - sigma[k]) * v[k]``, where ``v[k]`` is computed where the mask
says so and otherwise derived from the cache by the step's reuse rule. Search, sampling, the
comparison, TeaCache and alignment all run this loop; :func:`advance` is its step, which also
moves several trajectories through one batched call.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import torch

from .denoisers import Denoiser, OutputDenoiser, VelocityFn
from .rules import History, check_rules, history_depth, predict, remember


@dataclass(frozen=True)
class State:
    """The sampler state before step ``step``: the latent and the cache entries of the last
    computed steps (as many as the reuse rules need)."""

    step: int
    x: torch.Tensor
    history: History = ()


@dataclass(frozen=True)
class StepInfo:
    """What the loop's ``callback`` sees after each step."""

    step: int
    sigma: float
    computed: bool
    velocity: torch.Tensor
    state: State  # after the step


def advance(denoiser: Denoiser, states: Sequence[State], sigmas: Sequence[float], compute: bool,
            rules: Sequence[str], depth: int, restart: bool = False) -> tuple[list[State], torch.Tensor]:
    """One cached Euler step of every state in ``states`` (all at the same step) through one call
    of ``denoiser`` on their latents stacked along the batch; ``rules[i]`` is state i's reuse rule.
    A computed step keeps ``depth`` cache entries (``restart``: none from before it). Returns the
    new states and the velocity."""
    k = states[0].step
    sizes = [s.x.shape[0] for s in states]
    x = states[0].x if len(states) == 1 else torch.cat([s.x for s in states])
    if compute:
        v, cache = denoiser.compute(x, sigmas[k])
        caches = [cache] if len(states) == 1 else cache.split(sizes)
        histories = [remember(s.history, sigmas[k], c, depth, restart) for s, c in zip(states, caches)]
    else:
        if not all(s.history for s in states):
            raise ValueError(f"step {k} reuses a cache but no earlier step computed; mask[0] must be 1")
        predicted = [predict(s.history, sigmas[k], r) for s, r in zip(states, rules)]
        v = denoiser.reuse(x, sigmas[k], predicted[0] if len(states) == 1 else torch.cat(predicted))
        histories = [s.history for s in states]
    dx = (sigmas[k + 1] - sigmas[k]) * v
    steps = [dx] if len(states) == 1 else dx.split(sizes)
    return [State(k + 1, s.x + d, h) for s, d, h in zip(states, steps, histories)], v


def sample(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: Sequence[float] | torch.Tensor,
    mask: Sequence[int],
    rule: str | Sequence[str] = "repeat",
    *,
    restarts: Collection[int] = (),
    depth: int | None = None,
    start: State | None = None,
    callback: Callable[[StepInfo], None] | None = None,
    check_finite: bool = True,
) -> torch.Tensor:
    """Cached Euler over ``sigmas`` (K+1 values, floats or a differentiable tensor) computing where
    ``mask[k] == 1``; reused steps follow ``rule`` (one for all steps, or one per step).

    ``restarts``: steps whose cache starts afresh (another expert: they must compute); ``depth``:
    cache entries kept (default: what the rules need); ``start``: resume from a state (its step
    onwards); ``callback(info)`` after every step; ``check_finite``: raise FloatingPointError on a
    non-finite latent."""
    if not torch.is_tensor(sigmas):
        sigmas = [float(s) for s in sigmas]
    if len(mask) != len(sigmas) - 1:
        raise ValueError(f"mask has {len(mask)} steps but sigmas describe {len(sigmas) - 1}")
    rules = check_rules(rule, len(mask))
    depth = depth or history_depth(rules)
    state = start or State(0, x)
    for k in range(state.step, len(mask)):
        (state,), v = advance(denoiser, [state], sigmas, bool(mask[k]), [rules[k]], depth, k in restarts)
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
