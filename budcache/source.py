"""A model source: what ``search``, ``compare``, ``align`` and ``frontier`` run on.

A calibrated diffusers pipeline (:func:`budcache.calibration.pipeline_source`) and the demo model
(:func:`budcache.demo.problem.demo_source`) are both sources: batches of initial noise bound to
their conditioning, for calibration, validation and held-out evaluation, over one sigma schedule.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .errors import CalibrationError
from .sampling.denoisers import Batch
from .sampling.reschedule import with_sigmas
from .sampling.solver import Solver

SETS = ("calib", "validation", "eval")
VALIDATION_SEED_OFFSET = 5_000  # seeds of validation samples / prompts: seed + this (+ i)
HELD_OUT_SEED_OFFSET = 10_000  # seeds of held-out evaluation samples / prompts: seed + this (+ i)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))


@dataclass
class Source:
    """Batches of one model over one schedule, and how to judge its outputs.

        ``batches(which, reuse=None)``: fresh batches of the set ``which`` (``calib``, ``validation``,
        ``eval``; ``has(which)`` tells which exist) whose denoisers reuse by ``reuse`` (default: the
        source's ``reuse``; a plan of the other mode can be scored on the same source). ``solver``:
        the K-step solver (Euler over a schedule, or the pipeline's scheduler); ``fewer(b)``: the
        same solver with ``b`` steps (plain fewer-step sampling). ``model``: the transformer plans are made for.
    ``restarts``: steps whose cache restarts
        (another expert; they always compute). ``images``: latents -> images in [-1, 1] (None: score
        latents). ``decode``: a pipeline's VAE decoding final latents to images in [-1, 1], where budcache
    knows the family's latent packing (scored beside the latents; None: latents only). ``score(images)``: extra
    scores of held-out images. ``reference``: the final latents
        each calibration batch must reach under full compute (a replay check), with ``tolerance``.
    """

    solver: Solver
    batches: Callable[..., list[Batch]]
    fewer: Callable[[int], Solver]
    model: torch.nn.Module
    reuse: str = "residual"
    sets: tuple[str, ...] = SETS
    restarts: tuple[int, ...] = ()
    boundary_ratio: float | None = None
    begin_index: int = 0  # image-to-image: the step of the pipeline's schedule the source starts at
    images: Callable[[torch.Tensor], torch.Tensor] | None = None
    score: Callable[[torch.Tensor], dict[str, Any]] | None = None
    reference: Sequence[torch.Tensor] | None = None
    tolerance: float = 1e-3
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None  # a pipeline's final latents -> images in [-1, 1]
    sizes: tuple[str, ...] = ()  # a calibration of several sizes: the sizes (its batches carry their ``shift``)

    @property
    def sigmas(self) -> list[float]:
        return [float(s) for s in self.solver.sigmas]

    @property
    def num_steps(self) -> int:
        return len(self.solver.sigmas) - 1

    def solver_for(self, sigmas: Sequence[float] | None, model_sigmas: Sequence[float] | None = None) -> Solver:
        """The source's solver over a plan's ``sigmas`` (None: the source's own schedule), its model told
        the plan's ``model_sigmas`` where it has them."""
        return with_sigmas(self.solver, sigmas, model_sigmas)

    def has(self, which: str) -> bool:
        return which in self.sets

    def check_one_size(self, what: str) -> None:
        """Refuse ``what`` on a source of several sizes (it needs one schedule and one latent shape)."""
        if self.sizes:
            raise CalibrationError(
                f"{what} runs on one size; this calibration holds {', '.join(self.sizes)}: "
                "calibrate the size to judge alone (budcache.calibrate(..., height=, width=))"
            )

    def check_teacher(self, finals: Sequence[torch.Tensor]) -> None:
        """Refuse a replay whose full-compute results differ from the model's own (``reference``)."""
        if self.reference is None:
            return
        error = max(relative_error(t, r) for t, r in zip(finals, self.reference))
        if not error <= self.tolerance:
            raise ValueError(
                f"the replayed full-compute trajectory differs from the pipeline's result (relative "
                f"error {error:.3g}); this pipeline's denoising loop is not what budcache replays"
            )
