"""TeaCache (Liu et al. 2024) on budcache's sampler, for the same-NFE comparison.

At every step a cheap indicator ``u_k`` is read (FLUX-like transformers: the first block's
modulated input ``norm1(x_embedder(x), temb)``; Wan: the timestep embedding; others: the first
block's input). Its relative L1 change, rescaled by a degree-4 polynomial fitted to this model
(the maintainers' recipe: pooled pairs of input change vs output change over full-compute runs
of calibration samples), accumulates; a step is skipped while the sum stays below ``threshold``,
otherwise computed and the sum reset. The first and last steps always compute. Decisions are
per sample; reused steps follow the same reuse rule as every other policy.

Evaluation runs the whole batch through both a computed and a reused forward at each step and
keeps, per sample, the one its own decision picks: the same result as running each sample
alone, at a cost unrelated to the method's own speed (which is K / NFE).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch

from .residual import block_lists
from .sampler import Denoiser, check_rules, history_depth, predict, remember


def _indicator_module(transformer: torch.nn.Module) -> torch.nn.Module:
    """Where TeaCache reads its signal: block 0's ``norm1`` (FLUX-like), Wan's time embedder, or
    the first block itself (its input)."""
    first = block_lists(transformer)[0][0]
    if hasattr(first, "norm1") and type(transformer).__name__.startswith(("Flux", "Chroma", "QwenImage")):
        return first.norm1
    embedder = getattr(getattr(transformer, "condition_embedder", None), "time_embedder", None)
    return embedder if embedder is not None else first


@contextmanager
def indicator(transformer: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """Yields a list that receives the indicator of every transformer call (one tensor per call)."""
    module, seen = _indicator_module(transformer), []
    use_input = module is block_lists(transformer)[0][0]

    def hook(mod, args, kwargs, output):
        value = (args[0] if args else next(iter(kwargs.values()))) if use_input else output
        seen.append((value[0] if isinstance(value, tuple) else value).detach().float())

    handle = module.register_forward_hook(hook, with_kwargs=True)
    try:
        yield seen
    finally:
        handle.remove()


def rel_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per sample: mean|a - b| / mean|b|."""
    a, b = a.flatten(1), b.flatten(1)
    return (a - b).abs().mean(1) / b.abs().mean(1).clamp_min(1e-12)


def _per_sample(u: torch.Tensor, batch: int) -> torch.Tensor:
    """The indicator with the batch first (a time embedding of a batch-shared timestep broadcasts)."""
    return u if u.shape[0] == batch else u[:1].expand(batch, *u.shape[1:])


@torch.no_grad()
def fit_rescaler(batches: Sequence[tuple[Denoiser, torch.Tensor]], signal: list, sigmas: Sequence[float],
                 degree: int = 4) -> np.poly1d:
    """Fit the polynomial from full-compute runs of ``(denoiser, noise)`` batches: pairs (relL1 of
    consecutive indicators, relL1 of consecutive model outputs) pooled over all steps and samples."""
    inputs, outputs = [], []
    for denoiser, x in batches:
        prev_u = prev_v = None
        for k in range(len(sigmas) - 1):
            signal.clear()
            v, _ = denoiser.compute(x, sigmas[k])
            u = _per_sample(signal[0], x.shape[0])
            if prev_u is not None:
                inputs.append(rel_l1(u, prev_u))
                outputs.append(rel_l1(v, prev_v))
            x = x + (sigmas[k + 1] - sigmas[k]) * v
            prev_u, prev_v = u, v
    return np.poly1d(np.polyfit(torch.cat(inputs).numpy(), torch.cat(outputs).numpy(), degree))


@torch.no_grad()
def sample(
    denoiser: Denoiser,
    signal: list,
    x: torch.Tensor,
    sigmas: Sequence[float],
    rescale: np.poly1d,
    thresholds: Sequence[float],
    rule: str = "repeat",
) -> tuple[torch.Tensor, torch.Tensor]:
    """TeaCache sampling with one threshold per sample; returns (final latents, NFE per sample)."""
    n, k_steps = x.shape[0], len(sigmas) - 1
    rule = check_rules(rule, 1)[0]
    depth = history_depth([rule])
    delta = torch.as_tensor(thresholds, dtype=torch.float64).expand(n)
    acc = torch.zeros(n, dtype=torch.float64)
    histories: list[tuple] = [()] * n
    nfe = torch.zeros(n, dtype=torch.long)
    prev_u = None
    for k in range(k_steps):
        signal.clear()
        v_c, cache = denoiser.compute(x, sigmas[k])
        u = _per_sample(signal[0], n)  # the first call of the step (cond under CFG) decides
        if prev_u is None or k == k_steps - 1:
            compute = torch.ones(n, dtype=torch.bool)
        else:
            acc += torch.from_numpy(rescale(rel_l1(u, prev_u).double().numpy()))
            compute = acc >= delta
        prev_u = u
        acc[compute] = 0.0
        nfe += compute
        own = (lambda i: cache) if n == 1 else (lambda i: cache[i])  # noqa: E731  (one sample: all its calls)
        v = v_c
        if not compute.all():
            cached = [predict(histories[i], sigmas[k], rule) if not compute[i] else own(i) for i in range(n)]
            v_r = denoiser.reuse(x, sigmas[k], cached[0] if n == 1 else torch.stack(cached))
            v = torch.where(compute.view(-1, *[1] * (v.dim() - 1)), v_c, v_r)
        histories = [remember(histories[i], sigmas[k], own(i), depth) if compute[i] else histories[i]
                     for i in range(n)]
        x = x + (sigmas[k + 1] - sigmas[k]) * v
    return x, nfe
