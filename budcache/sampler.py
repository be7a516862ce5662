"""The cached Euler sampler: plain functions over a denoiser.

A denoiser gives the flow velocity at (x, sigma) in one of two ways: ``compute`` runs the
expensive part and returns ``(velocity, cache_entry)``; ``reuse`` derives the velocity at the
current (x, sigma) from the cache entry of the last computed step. Two kinds ship:

* :class:`OutputDenoiser` reuses the whole velocity (equal to Euler on the computed sigmas);
* :class:`ResidualDenoiser` reuses the transformer's block-stack residual while the input
  embedding and the output head run at the current x and sigma.

What a reused step takes from the cache is set by a reuse rule (:data:`RULES`): ``repeat`` the
last computed entry, or ``extrapolate`` it in sigma from the last two (three) computed steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import torch

from .plan import RULES
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


_DEPTH = {"repeat": 1, "extrapolate": 2, "extrapolate2": 3}


@dataclass(frozen=True)
class State:
    """The sampler state before step ``step``: the latent and ``(sigma, cache)`` of the last
    computed steps, newest last (as many as the reuse rules need)."""

    step: int
    x: torch.Tensor
    history: tuple[tuple[float, torch.Tensor], ...] = ()


def predict(history: Sequence[tuple[float, torch.Tensor]], sigma: float, rule: str) -> torch.Tensor:
    """The cache entry for a reused step at ``sigma``.

    ``repeat`` takes the last computed entry; ``extrapolate`` extends the last two linearly in
    sigma; ``extrapolate2`` fits a quadratic through the last three. With fewer computed steps
    a rule falls back to the highest order available (repeat with one).
    """
    if not history:
        raise ValueError("a reused step needs an earlier computed step; mask[0] must be 1")
    order = min(_DEPTH[rule], len(history)) - 1
    if order == 0:
        return history[-1][1]
    if order == 1:
        (s0, c0), (s1, c1) = history[-2:]
        return c1 + ((sigma - s1) / (s1 - s0)) * (c1 - c0)
    (s0, c0), (s1, c1), (s2, c2) = history[-3:]
    w0 = (sigma - s1) * (sigma - s2) / ((s0 - s1) * (s0 - s2))
    w1 = (sigma - s0) * (sigma - s2) / ((s1 - s0) * (s1 - s2))
    w2 = (sigma - s0) * (sigma - s1) / ((s2 - s0) * (s2 - s1))
    return w0 * c0 + w1 * c1 + w2 * c2


def check_rules(rules: str | Sequence[str], num_steps: int) -> list[str]:
    """One rule per step from a plan-wide rule or a per-step list."""
    rules = [rules] * num_steps if isinstance(rules, str) else list(rules)
    if len(rules) != num_steps:
        raise ValueError(f"{len(rules)} reuse rules for {num_steps} steps")
    bad = sorted(set(rules) - set(RULES))
    if bad:
        raise ValueError(f"unknown reuse rule(s) {bad}; choose from {RULES}")
    return rules


def remember(history: Sequence[tuple[float, torch.Tensor]], sigma: float, cache: torch.Tensor, depth: int,
             restart: bool = False) -> tuple[tuple[float, torch.Tensor], ...]:
    """The last ``depth`` cache entries after a computed step; earlier entries of another shape
    (the transformer's inputs changed) or before a ``restart`` (another expert) are dropped."""
    shape = getattr(cache, "shape", None)
    kept = () if restart else tuple(e for e in history if getattr(e[1], "shape", None) == shape)
    return (*kept, (sigma, cache))[-depth:]


def euler_step(
    denoiser: Denoiser, state: State, sigmas: Sequence[float], compute: bool, rule: str = "repeat", depth: int = 1,
    restart: bool = False,
) -> State:
    """One cached Euler step: x <- x + (sigma_{k+1} - sigma_k) * v_k; keeps ``depth`` cache entries
    (``restart``: none from before this step)."""
    k = state.step
    history = state.history
    if compute:
        v, cache = denoiser.compute(state.x, sigmas[k])
        history = remember(history, sigmas[k], cache, depth, restart)
    else:
        if not history:
            raise ValueError(f"step {k} reuses a cache but no earlier step computed; mask[0] must be 1")
        v = denoiser.reuse(state.x, sigmas[k], predict(history, sigmas[k], rule))
    return State(k + 1, state.x + (sigmas[k + 1] - sigmas[k]) * v, history)


def history_depth(rules: Sequence[str]) -> int:
    return max(_DEPTH[r] for r in rules)


def sample(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: Sequence[float],
    mask: Sequence[int],
    rule: str | Sequence[str] = "repeat",
    check_finite: bool = True,
) -> torch.Tensor:
    """Cached Euler over ``sigmas`` (K+1 values) computing where ``mask[k] == 1``; reused steps
    follow ``rule`` (one for all steps, or one per step)."""
    sigmas = [float(s) for s in sigmas]
    if len(mask) != len(sigmas) - 1:
        raise ValueError(f"mask has {len(mask)} steps but sigmas describe {len(sigmas) - 1}")
    rules = check_rules(rule, len(mask))
    depth = history_depth(rules)
    state = State(0, x)
    for k, m in enumerate(mask):
        state = euler_step(denoiser, state, sigmas, bool(m), rules[k], depth)
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
