"""TeaCache (Liu et al. 2024) on budcache's one cached loop, for the same-NFE comparison.

At every step a cheap indicator ``u_k`` is read (where: the family's ``indicator`` in
:mod:`budcache.families`; FLUX-like transformers: the first block's modulated input
``norm1(x_embedder(x), temb)``; Wan: the timestep embedding; others: the first block's input).
Its relative L1 change, rescaled by a degree-4 polynomial fitted to this model (the maintainers'
recipe: pooled pairs of input change vs output change over full-compute runs of calibration
samples), accumulates; a step is skipped while the sum stays below ``threshold``, otherwise
computed and the sum reset. The first and last steps always compute. Decisions are per sample;
reused steps follow the same reuse rule as every other policy.

:class:`TeaCacheDenoiser` runs inside the loop as a denoiser that the loop asks to compute
every step: it runs the whole batch through both a computed and a reused forward and keeps,
per sample, the one its own decision picks (the same result as running each sample alone, at a
cost unrelated to the method's own speed, which is K / NFE).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch

from ..families import for_transformer
from ..hooks.stack import block_lists
from ..sampling import loop
from ..sampling.denoisers import Denoiser
from ..sampling.loop import StepInfo
from ..sampling.rules import check_rules, history_depth, predict, remember
from ..sampling.solver import Solver, as_solver


def _indicator_module(transformer: torch.nn.Module) -> tuple[torch.nn.Module, bool]:
    """Where TeaCache reads its signal, and whether it is that module's input (else its output)."""
    first = block_lists(transformer)[0][0]
    family = for_transformer(transformer)
    kind = family.indicator if family is not None else None
    embedder = getattr(getattr(transformer, "condition_embedder", None), "time_embedder", None)
    if kind == "norm1" and hasattr(first, "norm1"):
        return first.norm1, False
    if kind in ("time", None) and embedder is not None:
        return embedder, False
    return first, True


@contextmanager
def indicator(transformer: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """Yields a list that receives the indicator of every transformer call (one tensor per call)."""
    module, use_input = _indicator_module(transformer)
    seen: list[torch.Tensor] = []

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
def fit_rescaler(
    batches: Sequence[tuple[Denoiser, torch.Tensor]],
    signal: list,
    sigmas: Sequence[float] | Solver,
    degree: int = 4,
    restarts: Sequence[int] = (),
) -> np.poly1d:
    """Fit the polynomial from full-compute runs of ``(denoiser, noise)`` batches: pairs (relL1 of
    consecutive indicators, relL1 of consecutive model outputs) pooled over all steps and samples."""
    solver = as_solver(sigmas)
    steps = len(solver.sigmas) - 1
    inputs, outputs = [], []
    for denoiser, x in batches:
        previous: list[tuple[torch.Tensor, torch.Tensor]] = []

        def observe(info: StepInfo) -> None:
            u = _per_sample(signal[0], x.shape[0])  # the step's first call (cond under CFG)
            signal.clear()
            if previous:
                inputs.append(rel_l1(u, previous[-1][0]))
                outputs.append(rel_l1(info.velocity, previous[-1][1]))
            previous[:] = [(u, info.velocity)]

        signal.clear()
        loop.sample(denoiser, x, solver, [1] * steps, restarts=restarts, callback=observe)
    return np.poly1d(np.polyfit(torch.cat(inputs).numpy(), torch.cat(outputs).numpy(), degree))


class TeaCacheDenoiser:
    """TeaCache's per-sample decisions, for a loop that computes every step (see the module docstring).
    ``nfe`` counts each sample's computed steps."""

    def __init__(
        self,
        denoiser: Denoiser,
        signal: list,
        rescale: np.poly1d,
        thresholds: Sequence[float],
        num_steps: int,
        batch: int,
        rule: str = "repeat",
    ):
        self.denoiser, self.signal, self.rescale, self.num_steps = denoiser, signal, rescale, num_steps
        self.rule = check_rules(rule, 1)[0]
        self.depth = history_depth([self.rule])
        self.delta = torch.as_tensor(thresholds, dtype=torch.float64).expand(batch)
        self.acc = torch.zeros(batch, dtype=torch.float64)
        self.histories: list[tuple] = [()] * batch
        self.nfe = torch.zeros(batch, dtype=torch.long)
        self.k, self.prev_u = 0, None

    @property
    def executions(self) -> int:
        return int(self.nfe.sum())

    def compute(self, x: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        n, k = x.shape[0], self.k
        self.signal.clear()
        v_c, cache = self.denoiser.compute(x, sigma)
        u = _per_sample(self.signal[0], n)  # the first call of the step (cond under CFG) decides
        if self.prev_u is None or k == self.num_steps - 1:
            compute = torch.ones(n, dtype=torch.bool)
        else:
            self.acc += torch.from_numpy(self.rescale(rel_l1(u, self.prev_u).double().numpy()))
            compute = self.acc >= self.delta
        self.prev_u, self.k = u, k + 1
        self.acc[compute] = 0.0
        self.nfe += compute
        own = (lambda i: cache) if n == 1 else (lambda i: cache[i])  # noqa: E731  (one sample: all its calls)
        v = v_c
        if not compute.all():
            cached = [predict(self.histories[i], sigma, self.rule) if not compute[i] else own(i) for i in range(n)]
            v_r = self.denoiser.reuse(x, sigma, cached[0] if n == 1 else torch.stack(cached))
            v = torch.where(compute.view(-1, *[1] * (v.dim() - 1)), v_c, v_r)
        self.histories = [
            remember(self.histories[i], sigma, own(i), self.depth) if compute[i] else self.histories[i]
            for i in range(n)
        ]
        return v, cache

    def reuse(self, x: torch.Tensor, sigma: float, cache: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("TeaCacheDenoiser decides per sample; run it with every step computing")


@torch.no_grad()
def sample(
    denoiser: Denoiser,
    signal: list,
    x: torch.Tensor,
    sigmas: Sequence[float] | Solver,
    rescale: np.poly1d,
    thresholds: Sequence[float],
    rule: str = "repeat",
) -> tuple[torch.Tensor, torch.Tensor]:
    """TeaCache sampling on the one loop with one threshold per sample; returns (final latents, NFE per sample)."""
    solver = as_solver(sigmas)
    steps = len(solver.sigmas) - 1
    tea = TeaCacheDenoiser(denoiser, signal, rescale, thresholds, steps, x.shape[0], rule)
    return loop.sample(tea, x, solver, [1] * steps, check_finite=False), tea.nfe
