"""Calibration and held-out inputs for the demo model, and its denoisers for each reuse mode."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ..residual import stack_hooks
from ..sampler import OutputDenoiser, ResidualDenoiser
from ..search import Batch
from .model import CHANNELS, NUM_CLASSES, TOKENS, DigitsFlux


def demo_inputs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` noise latents (N, 16, 16) and class labels (balanced, 0..9), reproducible from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, TOKENS, CHANNELS, generator=gen)
    labels = torch.arange(n) % NUM_CLASSES
    return noise, labels


@contextmanager
def demo_denoisers(model: DigitsFlux, reuse: str) -> Iterator:
    """Yields ``make(labels) -> Denoiser``; residual hooks live only inside the ``with`` block."""

    def fn_for(labels: torch.Tensor):
        return lambda x, sigma: model(x, sigma, labels)

    if reuse == "output":
        yield lambda labels: OutputDenoiser(fn_for(labels))
    elif reuse == "residual":
        with stack_hooks(model.transformer) as stack:
            yield lambda labels: ResidualDenoiser(fn_for(labels), stack)
    else:
        raise ValueError(f"reuse must be 'residual' or 'output', got {reuse!r}")


def demo_batches(make, noise: torch.Tensor, labels: torch.Tensor, batch_size: int = 64) -> list[Batch]:
    """Split inputs into calibration batches bound to their labels."""
    return [
        Batch(make(labels[i : i + batch_size]), noise[i : i + batch_size],
              replicate=lambda n, part=labels[i : i + batch_size]: make(part.repeat(n)))
        for i in range(0, noise.shape[0], batch_size)
    ]

