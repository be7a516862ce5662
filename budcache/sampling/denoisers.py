"""Denoisers: the velocity at (x, sigma), computed, or derived from a cache entry.

``compute(x, sigma)`` runs the expensive part and returns ``(velocity, cache_entry)``;
``reuse(x, sigma, cache)`` derives the velocity at the current (x, sigma) from a cache entry
(what the reuse rule predicted from the last computed steps). Two kinds ship:

* :class:`OutputDenoiser` reuses the whole velocity (equal to Euler on the computed sigmas);
* :class:`ResidualDenoiser` reuses the transformer's block-stack residual while the input
  embedding and the output head run at the current x and sigma.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch
from torch.utils.checkpoint import checkpoint

if TYPE_CHECKING:
    from ..hooks.stack import StackState

VelocityFn = Callable[[torch.Tensor, float], torch.Tensor]


class Denoiser(Protocol):
    """A model at (x, sigma) that computes or reuses; one with a ``blend(x, sigma)`` attribute (an
    inpainting pipeline's replay) has it applied to the latents after every step (see ``advance``)."""

    @property
    def executions(self) -> int: ...  # read-only: a wrapper (Checkpointed) reports its denoiser's

    def compute(self, x: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]: ...

    def reuse(self, x: torch.Tensor, sigma: float, cache: torch.Tensor) -> torch.Tensor: ...


class OutputDenoiser:
    """Reuse the last computed velocity. ``executions`` counts expensive calls."""

    def __init__(self, fn: VelocityFn):
        self.fn, self.executions = fn, 0

    def compute(self, x: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the model at (x, sigma): the velocity, and the velocity itself as the cache entry."""
        self.executions += 1
        v = self.fn(x, sigma)
        return v, v

    def reuse(self, x: torch.Tensor, sigma: float, cache: torch.Tensor) -> torch.Tensor:
        """The cached velocity, as it is."""
        return cache


class ResidualDenoiser:
    """Reuse the block-stack residual of a transformer hooked with :func:`budcache.hooks.stack_hooks`.

    ``fn`` calls the whole model (embedding, blocks, head) and returns the velocity.
    """

    def __init__(self, fn: VelocityFn, stack: StackState):
        self.fn, self.stack = fn, stack

    @property
    def executions(self) -> int:
        """Block-stack executions so far (the stack's count)."""
        return self.stack.executions

    def compute(self, x: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the whole model at (x, sigma): the velocity, and the block stack's residual as the cache entry."""
        with self.stack.step() as stack:
            v = self.fn(x, sigma)
            return v, stack.residual

    def reuse(self, x: torch.Tensor, sigma: float, cache: torch.Tensor) -> torch.Tensor:
        """The velocity at (x, sigma) with the blocks skipped: the input embedding and the output head run, the
        cached residual stands in for the block stack."""
        with self.stack.step(cache):
            return self.fn(x, sigma)


class Checkpointed:
    """A denoiser whose calls keep only their inputs for backward (activations are recomputed)."""

    def __init__(self, denoiser: Denoiser):
        self.denoiser = denoiser

    @property
    def executions(self) -> int:
        return self.denoiser.executions

    def compute(self, x: torch.Tensor, sigma) -> tuple[torch.Tensor, torch.Tensor]:
        return checkpoint(self.denoiser.compute, x, sigma, use_reentrant=False)

    def reuse(self, x: torch.Tensor, sigma, cache: torch.Tensor) -> torch.Tensor:
        return checkpoint(self.denoiser.reuse, x, sigma, cache, use_reentrant=False)


@dataclass
class Batch:
    """One batch of samples: its denoiser (bound to its conditioning) and its initial noise;
    ``replicate(n)``, when given, is a denoiser for the conditioning repeated ``n`` times (several
    candidate plans advanced in one batched forward). ``shift``: the factor this batch's schedule is shifted by
    from the schedule it is run over (another resolution of a calibration of several sizes; see
    :mod:`budcache.sampling.shift`); ``size``: its size (``HxW``) there, where losses are also reported per size."""

    denoiser: Denoiser
    noise: torch.Tensor
    replicate: Callable[[int], Denoiser] | None = None
    shift: float = 1.0
    size: str = ""
