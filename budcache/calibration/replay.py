"""Replay captured pipeline steps at any (x, sigma): the pipeline as a model source.

A step's transformer calls are re-run with the captured conditioning at the new latent and
timestep, and combined into a velocity the way the pipeline does it (its CFG formula, the
``combine`` of its entry in :mod:`budcache.families`). The replay is checked against the
pipeline's own velocities, so a wrong entry fails loudly instead of searching for another model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import torch

from ..errors import CalibrationError
from ..families import combine_for, for_pipeline, time_rule
from ..hooks.experts import input_names
from ..hooks.stack import StackState, reuse_for, stack_hooks
from ..sampling.denoisers import Batch
from ..source import SETS, Source, relative_error
from .capture import Calibration, Capture, Step, to_hidden


class PipelineDenoiser:
    """The velocity of one captured generation at (x, sigma), computing or reusing per call.

    Conditioning comes from the captured step with that sigma (the nearest one off the grid,
    where timesteps follow the affine sigma -> timestep map of the capture). Residual caches
    hold one entry per call (one per CFG branch).
    """

    def __init__(self, calib: Calibration, capture: Capture, stacks: dict[str, StackState] | None):
        self.capture, self.stacks, self.executions = capture, stacks, 0
        self.blend = capture.blend  # an inpainting pipeline's step after the scheduler's (None: none)
        self.experts, self.combine = calib.experts(), combine_for(calib.pipe)
        self.settings = {**capture.settings, "guider": getattr(calib.pipe, "guider", None)}
        self.grid = {s.sigma: s for s in capture.steps}
        self.shapes: dict[int, list] = {}  # per call of a step: the residual shapes its computed calls gave
        rule, config = time_rule(calib.pipe), calib.pipe.scheduler.config
        kwargs = capture.schedule_kwargs or calib.schedule_kwargs  # this size's (mu)
        self.time = lambda sigma: rule(sigma, config, kwargs)  # the scheduler's timestep at ``sigma``
        first, last = capture.steps[0], capture.steps[-1]
        self.t0 = self.time(torch.tensor(first.sigma, dtype=torch.float64))
        span = self.time(torch.tensor(last.sigma, dtype=torch.float64)) - self.t0
        self.slopes = [
            (b.double() - a.double()) / span if span else torch.zeros_like(a, dtype=torch.float64)
            for a, b in zip(first.timesteps, last.timesteps)
        ]

    def _step(self, sigma: float) -> tuple[Step, list[torch.Tensor]]:
        """The captured step whose conditioning serves ``sigma`` (the nearest), and the time each call
        sees: the captured one on the grid, else the family's time rule (:func:`budcache.families.time_rule`)
        mapped to the transformer's argument the way the pipeline maps its scheduler's timesteps (affinely,
        fitted on the first and last captured steps)."""
        step = self.grid.get(sigma)
        if step is not None:
            return step, step.timesteps
        step = min(self.capture.steps, key=lambda s: abs(s.sigma - sigma))
        if not torch.is_tensor(sigma) and abs(step.sigma - sigma) <= 1e-6:  # the grid, shifted back from another size
            return step, step.timesteps
        first = self.capture.steps[0]
        t = self.time(sigma if torch.is_tensor(sigma) else torch.tensor(sigma, dtype=torch.float64))
        timesteps = [(a.double() + slope * (t - self.t0)).to(a.dtype) for a, slope in zip(first.timesteps, self.slopes)]
        return step, timesteps

    def _velocity(self, x: torch.Tensor, sigma: float, cache: torch.Tensor | None) -> tuple[torch.Tensor, list]:
        step, timesteps = self._step(sigma)
        outputs, residuals = [], []
        for i, call in enumerate(step.calls):
            module = self.experts[call.module]
            stack = self.stacks[call.module] if self.stacks is not None else None
            hidden, t = input_names(module)
            inputs = {hidden: to_hidden(call.layout, x, call.dtype, call.extra), t: timesteps[i]}
            if stack is None:
                out = module(**call.kwargs, **inputs)
            else:  # a cached residual is split in the shapes of this capture's call (sizes differ between captures)
                with stack.step(None if cache is None else cache[i], self.shapes.get(i)):
                    out = module(**call.kwargs, **inputs)
                    residuals.append(stack.residual)
                    if cache is None:
                        self.shapes[i] = stack.shapes
            outputs.append(out[0] if isinstance(out, tuple) else out.sample)
        return self.combine(outputs, step.calls, self.settings, x).float(), residuals

    def compute(self, x: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        self.executions += 1
        v, residuals = self._velocity(x, sigma, None)
        if self.stacks is None:
            return v, v
        if len({r.shape for r in residuals}) != 1:
            raise RuntimeError("budcache: the calls of one step cache residuals of different shapes")
        return v, torch.stack(residuals)

    def reuse(self, x: torch.Tensor, sigma: float, cache: torch.Tensor) -> torch.Tensor:
        return cache if self.stacks is None else self._velocity(x, sigma, cache)[0]


@contextmanager
def denoisers(calib: Calibration, reuse: str) -> Iterator[Callable[..., PipelineDenoiser]]:
    """Yields ``make(capture, reuse=reuse)``; with ``residual`` reuse the hooks on every expert live
    only inside the ``with`` block (and ``make(capture, "output")`` still gives output reuse)."""
    if reuse not in ("residual", "output"):
        raise ValueError(f"reuse must be 'residual' or 'output', got {reuse!r}")
    with ExitStack() as hooks:
        stacks = None
        if reuse == "residual":
            stacks = {name: hooks.enter_context(stack_hooks(m)) for name, m in calib.experts().items()}
        yield lambda capture, mode=reuse: PipelineDenoiser(calib, capture, stacks if mode == "residual" else None)


def _tolerance(calib: Calibration) -> float:
    return 1e-3 if calib.pipe.transformer.dtype == torch.float32 else 5e-2


def check_replay(calib: Calibration) -> float:
    """Replay step 0 of the first capture and compare with the velocity the pipeline used;
    raises when the replay does not reproduce the pipeline. Returns the relative error."""
    capture = calib.captures[0]
    with torch.no_grad(), denoisers(calib, "output") as make:
        v, _ = make(capture).compute(capture.latents.float(), calib.sigmas[0])
    error = relative_error(v, capture.steps[0].velocity)
    if not error <= _tolerance(calib):
        family = for_pipeline(calib.pipe)
        known = "a family without a guidance rule" if family is None else f"family {family.name}"
        raise ValueError(
            f"budcache's replay of {calib.pipeline} ({known}) does not reproduce the pipeline's velocity at step 0 "
            f"(relative error {error:.3g}); its guidance is not supported (see budcache.families for the supported "
            "pipelines; any pipeline with one unguided transformer call per step works)"
        )
    return error


DECODED = ("FluxPipeline", "StableDiffusion3Pipeline")  # pipelines whose final latents budcache can decode


def decoder(calib: Calibration) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The pipeline's VAE decoding of final latents into images in [-1, 1] as its ``__call__`` does it
    (FLUX unpacks its 2x2 patches first), for the pipelines in :data:`DECODED`; else None."""
    pipe, vae = calib.pipe, getattr(calib.pipe, "vae", None)
    if vae is None or type(pipe).__name__ not in DECODED:
        return None
    settings = calib.captures[0].settings
    size = getattr(pipe, "default_sample_size", 128) * getattr(pipe, "vae_scale_factor", 8)
    height, width = settings.get("height") or size, settings.get("width") or size

    @torch.no_grad()
    def decode(latents: torch.Tensor) -> torch.Tensor:
        images = []
        for x in latents.split(1):
            x = x.to(pipe._execution_device, vae.dtype)
            if hasattr(pipe, "_unpack_latents"):
                x = pipe._unpack_latents(x, height, width, pipe.vae_scale_factor)
            x = x / vae.config.scaling_factor + (vae.config.get("shift_factor") or 0.0)
            images.append(vae.decode(x, return_dict=False)[0].float().clamp(-1, 1).cpu())
        return torch.cat(images)

    return decode


@contextmanager
def pipeline_source(
    calib: Calibration,
    reuse: str = "residual",
    *,
    validation: Calibration | None = None,
    held_out: Calibration | None = None,
) -> Iterator[Source]:
    """A :class:`~budcache.source.Source` on calibrated captures: one batch per prompt; ``validation``
    and ``held_out`` captures (same schedule) become the ``validation`` and ``eval`` sets. The
    replay is checked first (:func:`check_replay`); residual hooks live inside the ``with`` block."""
    check_replay(calib)
    sets = {
        "calib": calib.captures,
        "validation": validation and validation.captures,
        "eval": held_out and held_out.captures,
    }
    try:
        shifts = {which: calib.shifts(captures) for which, captures in sets.items() if captures}
    except CalibrationError as e:
        raise CalibrationError(f"validation / held-out captures: {e}") from None
    mixed = len({c.size for captures in sets.values() if captures for c in captures}) > 1
    reuse = reuse_for(calib.pipe.transformer, reuse)

    def batches(which: str, mode: str | None = None) -> list[Batch]:
        return [
            Batch(make(c, mode or reuse), c.latents.float(), shift=f, size=c.size if mixed else "")
            for c, f in zip(sets[which], shifts[which])
        ]

    with denoisers(calib, reuse) as make:
        yield Source(
            solver=calib.solver(),
            batches=batches,
            fewer=calib.solver,
            model=calib.pipe.transformer,
            reuse=reuse,
            sets=tuple(w for w in SETS if sets[w]),
            restarts=tuple(calib.forced_steps()),
            boundary_ratio=calib.boundary_ratio,
            begin_index=calib.begin_index,
            reference=[c.final for c in calib.captures],
            tolerance=10 * _tolerance(calib),
            decode=None if mixed else decoder(calib),
            sizes=tuple(calib.sizes) if mixed else (),
        )
