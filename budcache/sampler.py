"""The cached Euler sampler: plain functions over a denoiser.

A denoiser gives the flow velocity at (x, sigma) in one of two ways: ``compute`` runs the
expensive part and returns ``(velocity, cache_entry)``; ``reuse`` derives the velocity at the
current (x, sigma) from the cache entry of the last computed step. Two kinds ship:

* :class:`OutputDenoiser` reuses the whole velocity (equal to Euler on the computed sigmas);
* :class:`ResidualDenoiser` reuses the transformer's block-stack residual while the input
  embedding and the output head run at the current x and sigma.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import torch

from .residual import StackState

VelocityFn = Callable[[torch.Tensor, float], torch.Tensor]


class Denoiser(Protocol):
    executions: int

    def compute(self, x: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]: ...

    def reuse(self, x: torch.Tensor, sigma: float, cache: torch.Tensor) -> torch.Tensor: ...


class OutputDenoiser:
    """Reuse the last computed velocity. ``executions`` counts expensive calls."""

    def __init__(self, fn: VelocityFn):
        self.fn, self.executions = fn, 0

    def compute(self, x: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        self.executions += 1
        v = self.fn(x, sigma)
        return v, v

    def reuse(self, x: torch.Tensor, sigma: float, cache: torch.Tensor) -> torch.Tensor:
        return cache


class ResidualDenoiser:
    """Reuse the block-stack residual of a transformer hooked with :func:`residual.stack_hooks`.

    ``fn`` calls the whole model (embedding, blocks, head) and returns the velocity.
    """

    def __init__(self, fn: VelocityFn, stack: StackState):
        self.fn, self.stack = fn, stack

    @property
    def executions(self) -> int:
        return self.stack.executions

    @contextmanager
    def _mode(self, mode: str, residual: torch.Tensor | None = None):
        self.stack.mode, self.stack.residual = mode, residual
        try:
            yield
        finally:
            self.stack.reset()

    def compute(self, x: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        with self._mode("compute"):
            v = self.fn(x, sigma)
            return v, self.stack.residual

    def reuse(self, x: torch.Tensor, sigma: float, cache: torch.Tensor) -> torch.Tensor:
        with self._mode("reuse", cache):
            return self.fn(x, sigma)


@dataclass(frozen=True)
class State:
    """The sampler state before step ``step``: the latent and the cache of the last computed step."""

    step: int
    x: torch.Tensor
    cache: torch.Tensor | None = None


def euler_step(denoiser: Denoiser, state: State, sigmas: Sequence[float], compute: bool) -> State:
    """One cached Euler step: x <- x + (sigma_{k+1} - sigma_k) * v_k."""
    k = state.step
    if compute:
        v, cache = denoiser.compute(state.x, sigmas[k])
    else:
        if state.cache is None:
            raise ValueError(f"step {k} reuses a cache but no earlier step computed; mask[0] must be 1")
        v, cache = denoiser.reuse(state.x, sigmas[k], state.cache), state.cache
    return State(k + 1, state.x + (sigmas[k + 1] - sigmas[k]) * v, cache)


def sample(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: Sequence[float],
    mask: Sequence[int],
    check_finite: bool = True,
) -> torch.Tensor:
    """Cached Euler over ``sigmas`` (K+1 values) computing where ``mask[k] == 1``."""
    sigmas = [float(s) for s in sigmas]
    if len(mask) != len(sigmas) - 1:
        raise ValueError(f"mask has {len(mask)} steps but sigmas describe {len(sigmas) - 1}")
    state = State(0, x)
    for k, m in enumerate(mask):
        state = euler_step(denoiser, state, sigmas, bool(m))
        if check_finite and not torch.isfinite(state.x).all():
            raise FloatingPointError(
                f"non-finite latent after step {k} (sigma {sigmas[k]:.4g}); check the model inputs and schedule"
            )
    return state.x


def euler(fn: VelocityFn, x: torch.Tensor, sigmas: Sequence[float]) -> torch.Tensor:
    """Plain Euler over ``sigmas``: every step computes."""
    return sample(OutputDenoiser(fn), x, sigmas, [1] * (len(sigmas) - 1))


def linear_sigmas(num_steps: int) -> list[float]:
    """``num_steps`` + 1 sigmas from 1 to 0, evenly spaced."""
    return torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64).tolist()
