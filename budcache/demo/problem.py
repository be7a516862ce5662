"""The demo model as a model source: calibration, validation and held-out inputs, its denoisers for
each reuse mode, and how its outputs are judged (images, digit accuracy)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch

from ..hooks.stack import stack_hooks
from ..sampling import plain
from ..sampling.denoisers import Batch, OutputDenoiser, ResidualDenoiser
from ..sampling.loop import linear_sigmas
from ..sampling.shift import shift_sigmas
from ..sampling.solver import Euler, SchedulerSolver, Solver
from ..source import HELD_OUT_SEED_OFFSET, SETS, VALIDATION_SEED_OFFSET, Source
from .model import CHANNELS, NUM_CLASSES, TOKENS, DigitsFlux, load_demo_model, unpack


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
        Batch(
            make(labels[i : i + batch_size]),
            noise[i : i + batch_size],
            replicate=lambda n, part=labels[i : i + batch_size]: make(part.repeat(n)),
        )
        for i in range(0, noise.shape[0], batch_size)
    ]


SCHEDULERS = {"euler": None, "unipc": "UniPC (flow)", "dpm": "DPM-Solver++ 2M (flow)"}  # name -> plain.SCHEDULERS


@contextmanager
def demo_source(
    steps: int = 28,
    calibration: int = 16,
    validation: int | None = None,
    held_out: int = 100,
    seed: int = 0,
    reuse: str = "residual",
    shard: tuple[int, int] = (0, 1),
    model: DigitsFlux | None = None,
    scheduler: str = "euler",
    shift: float | tuple[float, ...] = 1.0,
) -> Iterator[Source]:
    """The demo model as a :class:`~budcache.source.Source` over ``steps`` linear sigmas:
    ``calibration`` samples from ``seed``, ``validation`` (default: as many) from
    ``seed + VALIDATION_SEED_OFFSET``, ``held_out`` from ``seed + HELD_OUT_SEED_OFFSET``; ``shard`` =
    (rank, world size) keeps this process's share of the calibration and validation samples.
    ``batches(which, reuse)`` gives denoisers of either reuse mode (default ``reuse``).
    ``scheduler``: the solver, ``euler`` over linear sigmas or a diffusers flow scheduler of
    :data:`SCHEDULERS` (``unipc``, ``dpm``) on its own schedule, for K and for fewer steps. ``shift``: the
    schedule's time shift (sigma -> shift * sigma / (1 + (shift - 1) * sigma), as FLUX's and SD3's schedulers
    shift theirs; 1: none), for Euler only; several shifts stand for several sizes: every sample of every set runs
    at each shift (as ``budcache.calibrate(..., sizes=...)`` runs every prompt at every size), the first shift's
    schedule is the source's and the batches carry their ``shift`` from it."""
    from .data import accuracy, digit_classifier

    if scheduler not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {scheduler!r}; choose from {sorted(SCHEDULERS)}")
    shifts = tuple(float(s) for s in shift) if isinstance(shift, (tuple, list)) else (float(shift),)
    sizes = tuple(f"shift {s:g}" for s in shifts) if len(shifts) > 1 else ()  # what stands for a size here
    if shifts != (1.0,) and SCHEDULERS[scheduler] is not None:
        raise ValueError(f"shift applies to the euler scheduler, not {scheduler!r}")

    def solver(num_steps: int) -> Solver:
        if SCHEDULERS[scheduler] is None:
            return Euler(shift_sigmas(linear_sigmas(num_steps), shifts[0]))
        configured = plain.SCHEDULERS[SCHEDULERS[scheduler]]()
        configured.set_timesteps(num_steps)
        return SchedulerSolver(configured)

    model = model or load_demo_model()
    rank, world = shard
    counts = {"calib": calibration, "validation": calibration if validation is None else validation, "eval": held_out}
    offsets = {"calib": 0, "validation": VALIDATION_SEED_OFFSET, "eval": HELD_OUT_SEED_OFFSET}
    inputs = {w: demo_inputs(counts[w], seed + offsets[w]) for w in SETS if counts[w]}
    for which in ("calib", "validation"):
        if which in inputs:
            inputs[which] = tuple(t[rank::world] for t in inputs[which])
    classifier = []

    def score(images: torch.Tensor) -> dict:
        classifier[:] = classifier or [digit_classifier()]
        return {"accuracy": accuracy(classifier[0], images, inputs["eval"][1])}

    with ExitStack() as hooks:
        makers = {"output": lambda labels: OutputDenoiser(lambda x, sigma: model(x, sigma, labels))}
        if reuse == "residual":
            makers["residual"] = hooks.enter_context(demo_denoisers(model, "residual"))

        def batches(which: str, mode: str | None = None) -> list[Batch]:
            made = demo_batches(makers[mode or reuse], *inputs[which], batch_size=64 if which == "eval" else 8)
            if len(shifts) == 1:
                return made
            return [
                dataclasses.replace(b, shift=s / shifts[0], size=size) for s, size in zip(shifts, sizes) for b in made
            ]

        yield Source(
            solver=solver(steps),
            batches=batches,
            fewer=solver,
            model=model.transformer,
            reuse=reuse,
            sets=tuple(inputs),
            images=unpack,
            score=score,
            sizes=sizes,
        )
