"""Calibration: run a diffusers pipeline with full compute and capture what the search replays.

Per-instance hooks record, for every denoising step, the transformer calls (their arguments
except the latent input and the timestep, which the search supplies), the latents fed to the
scheduler and the velocity the pipeline combined from the calls. The search then replays the
transformer directly: no text encoding and no VAE decoding per evaluated mask.
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
from diffusers.hooks import HookRegistry, ModelHook
from tqdm.auto import tqdm

from ..checks import check_call_arguments, check_int, check_pipeline, check_type
from ..errors import ArgumentTypeError, CalibrationError
from ..families import INPAINT_LATENTS
from ..hooks.experts import context_name, contexts, experts, input_names, original_forward, step_index
from ..hooks.override import override, restore
from ..sampling.shift import relative_shift
from ..sampling.solver import Euler, Solver, solver_for

_HOOK = "budcache_capture"


def _same(a: Any, b: Any) -> bool:
    if torch.is_tensor(a) or torch.is_tensor(b):
        return torch.is_tensor(a) and torch.is_tensor(b) and (a is b or (a.shape == b.shape and torch.equal(a, b)))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def _layout(hidden: Any, x: torch.Tensor) -> tuple[tuple[str, int], torch.Tensor | None]:
    """How a call's latent input derives from the scheduler's latents ``x``: the same tensor,
    ``n`` copies along the batch (batched CFG), a list of per-sample frames (Z-Image), or the
    latents with constant channels appended (image conditioning); and those channels."""
    if torch.is_tensor(hidden) and hidden.shape[0] % x.shape[0] == 0:
        n = hidden.shape[0] // x.shape[0]
        if hidden.shape[1:] == x.shape[1:] and torch.equal(hidden, to_hidden(("tensor", n), x, hidden.dtype)):
            return ("tensor", n), None
        c = x.shape[1]
        if (
            n == 1
            and x.dim() > 2
            and hidden.shape[1] > c
            and hidden.shape[2:] == x.shape[2:]
            and torch.equal(hidden[:, :c], x.to(hidden.dtype))
        ):
            return ("concat", 1), hidden[:, c:].clone()
    if isinstance(hidden, (list, tuple)) and hidden and len(hidden) % x.shape[0] == 0:
        n = len(hidden) // x.shape[0]
        expect = to_hidden(("frames", n), x, hidden[0].dtype)
        if all(h.shape == e.shape and torch.equal(h, e) for h, e in zip(hidden, expect)):
            return ("frames", n), None
    raise ValueError(
        "budcache cannot express how this pipeline builds the transformer input from its latents "
        "(supported: the latents, copies of them along the batch, per-sample frames, latents with constant "
        "channels appended); apply a plan searched elsewhere, or open an issue with the pipeline class"
    )


def to_hidden(layout: tuple[str, int], x: torch.Tensor, dtype: torch.dtype, extra: torch.Tensor | None = None) -> Any:
    kind, n = layout
    h = x.to(dtype).repeat(n, *[1] * (x.dim() - 1)) if n > 1 else x.to(dtype)
    if kind == "concat":
        assert extra is not None  # the "concat" layout comes with its constant channels (_layout)
        return torch.cat([h, extra], dim=1)
    return list(h.unsqueeze(2).unbind(0)) if kind == "frames" else h


@dataclass
class Call:
    """One transformer call within a step: which expert, its cache context, its other arguments."""

    module: str
    context: str | None
    kwargs: dict[str, Any]
    layout: tuple[str, int]
    dtype: torch.dtype
    extra: torch.Tensor | None = None  # constant channels appended to the latents ("concat" layout)


@dataclass
class Step:
    """One denoising step of a captured generation."""

    sigma: float
    timesteps: list[torch.Tensor]  # per call, as the pipeline passed it
    calls: list[Call]
    velocity: torch.Tensor  # what the pipeline gave the scheduler


@dataclass
class Blend:
    """An inpainting pipeline's step after the scheduler's: the unmasked region is reset to the image
    latents noised to the next sigma, ``(1 - mask) * (sigma * noise + (1 - sigma) * image) + mask * x``."""

    mask: torch.Tensor
    image: torch.Tensor
    noise: torch.Tensor

    def __call__(self, x: torch.Tensor, sigma: Any) -> torch.Tensor:
        n = x.shape[0] // self.image.shape[0]  # candidates stacked along the batch
        tile = lambda t: t.repeat(n, *[1] * (t.dim() - 1)) if n > 1 else t  # noqa: E731
        target = sigma * tile(self.noise) + (1 - sigma) * tile(self.image)
        mask = tile(self.mask)
        return ((1 - mask) * target + mask * x).to(x.dtype)


@dataclass
class Capture:
    """One full-compute generation: the initial latents, its steps and the final latents (and an
    inpainting pipeline's blend)."""

    latents: torch.Tensor
    final: torch.Tensor
    steps: list[Step]
    settings: dict[str, Any]
    blend: Blend | None = None
    sigmas: list[float] = field(default_factory=list)  # the K+1 sigmas of this generation (its size's schedule)
    schedule_kwargs: dict[str, Any] = field(default_factory=dict)  # its scheduler's set_timesteps arguments (mu)

    @property
    def size(self) -> str:
        """The generation's size as ``HxW`` (``HxWxF`` with frames), from its call arguments."""
        return "x".join(str(self.settings[k]) for k in _SIZES if self.settings.get(k) is not None) or "default"


@dataclass
class Calibration:
    """Captured generations of one pipeline: at one sigma schedule, or at several sizes whose schedules are time
    shifts of one another (see :mod:`budcache.sampling.shift`). ``sigmas`` and ``schedule_kwargs`` are the first
    generation's (the reference the others are shifts of)."""

    pipe: Any
    captures: list[Capture]
    sigmas: list[float]
    schedule_kwargs: dict[str, Any] = field(default_factory=dict)
    begin_index: int = 0  # image-to-image (strength < 1): the calls ran the steps from this one on

    @property
    def num_steps(self) -> int:
        """K: the steps each captured generation ran."""
        return len(self.sigmas) - 1

    @property
    def sizes(self) -> list[str]:
        """The sizes calibrated (``HxW``), in order of first appearance."""
        return list(dict.fromkeys(c.size for c in self.captures))

    def shifts(self, captures: Sequence[Capture] | None = None) -> list[float]:
        """The factor each capture's schedule (of ``captures``, default this calibration's) is shifted by from
        ``sigmas`` (1.0 at the same schedule); a CalibrationError where one is not a shift of it."""
        factors = []
        for capture in self.captures if captures is None else captures:
            factor = relative_shift(capture.sigmas or self.sigmas, self.sigmas)
            if factor is None:
                raise CalibrationError(
                    f"the schedule at size {capture.size} is not a time shift of the one at "
                    f"{self.captures[0].size} (another step count or scheduler setting); "
                    "calibrate sizes of one scheduler and step count together"
                )
            factors.append(factor)
        return factors

    @property
    def pipeline(self) -> str:
        """The calibrated pipeline's class name."""
        return type(self.pipe).__name__

    def forced_steps(self) -> list[int]:
        """Steps whose transformer calls change (another expert, CFG on/off, other argument shapes
        or settings): a cache from before cannot serve them, so they compute and restart the cache."""
        forced = set()
        for capture in self.captures:
            shapes = [tuple(_structure(c) for c in step.calls) for step in capture.steps]
            forced |= {k for k in range(1, len(shapes)) if shapes[k] != shapes[k - 1]}
        return sorted(forced)

    @property
    def boundary_ratio(self) -> float | None:
        """The expert boundary of a two-expert pipeline (Wan2.2), else None."""
        if getattr(self.pipe, "transformer_2", None) is None:
            return None
        return self.pipe.config.get("boundary_ratio")

    def experts(self) -> dict[str, torch.nn.Module]:
        """The pipeline's transformer(s) by attribute name (``transformer``, Wan2.2's ``transformer_2``)."""
        return experts(self.pipe)

    def scheduler(self, num_steps: int | None = None) -> Any:
        """A copy of the pipeline's scheduler set up as calibration called it (same shift / ``mu``)
        for the calibrated K steps, or for ``num_steps`` (plain fewer-step sampling)."""
        scheduler = copy.deepcopy(self.pipe.scheduler)
        kwargs = dict(self.schedule_kwargs)
        if num_steps is None or num_steps == self.num_steps:
            scheduler.set_timesteps(**kwargs)
            return scheduler
        sigmas = kwargs.pop("sigmas", None)
        if sigmas is not None:  # Flux-style linspace(1, 1/K, K) given by the pipeline
            k = len(sigmas)
            ends = (1.0, 1.0 / k) if np.allclose(sigmas, np.linspace(1.0, 1.0 / k, k)) else (sigmas[0], sigmas[-1])
            kwargs["sigmas"] = np.linspace(ends[0], 1.0 / num_steps if ends[1] == 1.0 / k else ends[1], num_steps)
        kwargs.pop("num_inference_steps", None)
        kwargs.pop("timesteps", None)
        scheduler.set_timesteps(num_inference_steps=num_steps, **kwargs)
        return scheduler

    def solver(self, num_steps: int | None = None) -> Solver:
        """The loop's step as the pipeline takes it (its scheduler's step; Euler for FlowMatchEuler),
        for the calibrated K steps or for ``num_steps``."""
        if self.begin_index:
            return self._tail_solver(num_steps)
        solver = solver_for(self.scheduler(num_steps))
        if num_steps in (None, self.num_steps) and not np.allclose(solver.sigmas, self.sigmas, atol=1e-6):
            raise ValueError(
                f"{type(self.pipe.scheduler).__name__} does not rebuild the calibrated schedule from "
                "the captured set_timesteps call; budcache cannot replay this pipeline"
            )
        return solver

    def _tail_solver(self, num_steps: int | None) -> Solver:
        """Image-to-image: Euler over the steps that ran (the pipeline's K-step schedule from
        ``begin_index`` on), or over ``num_steps`` steps of that same curve (plain fewer-step Euler from
        the same starting noise level)."""
        scheduler = self.scheduler()
        if type(scheduler).__name__ != "FlowMatchEulerDiscreteScheduler" or scheduler.config.get("stochastic_sampling"):
            raise ValueError(
                f"image-to-image calibration (strength < 1) needs FlowMatchEulerDiscreteScheduler, not "
                f"{type(scheduler).__name__}"
            )
        tail = scheduler.sigmas.tolist()[self.begin_index :]
        if num_steps in (None, self.num_steps):
            if not np.allclose(tail, self.sigmas, atol=1e-6):
                raise ValueError(f"{type(scheduler).__name__} does not rebuild the calibrated schedule")
            return Euler(tail)
        at = np.linspace(0, len(tail) - 1, num_steps + 1)
        return Euler([float(s) for s in np.interp(at, np.arange(len(tail)), tail)])


class _CaptureHook(ModelHook):
    """Records every call of a transformer: expert name, cache context, bound arguments."""

    _is_stateful = True

    def __init__(self, name: str, calls: list):
        super().__init__()
        self.name, self.calls = name, calls
        self.contexts = contexts()

    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        bound = inspect.signature(type(module).forward).bind(module, *args, **kwargs)
        arguments = dict(bound.arguments)
        arguments.pop("self")
        context = context_name(self.contexts)
        self.calls.append((self.name, context, arguments, input_names(module)))
        return original_forward(self)(*args, **kwargs)

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        return module


class _Recorder:
    """Collects the calls and scheduler steps of one pipeline call."""

    def __init__(self) -> None:
        self.pending: list = []
        self.steps: list[Step] = []
        self.latents: torch.Tensor | None = None
        self.final: torch.Tensor | None = None
        self.inpaint: dict[str, torch.Tensor] = {}  # an inpainting pipeline's mask, image latents and noise
        self.changed = False  # the pipeline changed the latents between two scheduler steps

    def close_step(self, sigma: float, model_output: torch.Tensor, sample: torch.Tensor, out: torch.Tensor) -> None:
        if not self.pending:
            raise RuntimeError(
                "budcache: the pipeline took a scheduler step without a transformer call (a second "
                "latent stream, like LTX-2's audio?); calibrate supports pipelines with one latent "
                "stream; budcache.apply works with any plan"
            )
        if self.latents is None:
            self.latents = sample.detach().clone()
        elif not torch.equal(sample, cast(torch.Tensor, self.final)):  # set by the step that set latents
            self.changed = True
        previous = self.steps[-1].calls if self.steps else []
        calls, timesteps = [], []
        for i, (name, context, arguments, (hidden_name, t_name)) in enumerate(self.pending):
            hidden, timestep = arguments.pop(hidden_name), arguments.pop(t_name)
            dtype = (hidden if torch.is_tensor(hidden) else hidden[0]).dtype
            layout, extra = _layout(hidden, sample)
            call = Call(name, context, arguments, layout, dtype, extra)
            if i < len(previous) and _same_call(previous[i], call):
                call = previous[i]  # unchanged conditioning is stored once
            elif i < len(previous) and _structure(previous[i]) == _structure(call):
                changed = sorted(k for k in call.kwargs if not _same(call.kwargs[k], previous[i].kwargs.get(k)))
                raise ValueError(
                    f"budcache cannot replay this pipeline: the transformer argument(s) {changed} change from step "
                    "to step (a second latent stream, like LTX-2's audio?); calibrate and search support pipelines "
                    "whose only evolving input is the latents; budcache.apply works with any plan"
                )
            calls.append(call)
            timesteps.append(torch.as_tensor(timestep).detach().clone())
        self.steps.append(Step(sigma, timesteps, calls, model_output.detach().float().clone()))
        self.final = out.detach().clone()
        self.pending.clear()


def _structure(call: Call) -> tuple:
    """What a cache depends on: expert, branch, input layout, and the arguments' shapes and settings."""

    def sig(v: Any) -> Any:
        if torch.is_tensor(v):
            return ("tensor", tuple(v.shape))
        if isinstance(v, (list, tuple)):
            return tuple(sig(x) for x in v)
        if isinstance(v, dict):
            return tuple(sorted((k, sig(x)) for k, x in v.items()))
        return v if isinstance(v, (int, float, str, bool, type(None))) else type(v).__name__

    return call.module, call.context, call.layout, str(call.dtype), sig(call.extra), sig(call.kwargs)


def _same_call(a: Call, b: Call) -> bool:
    return (
        (a.module, a.context, a.layout, a.dtype) == (b.module, b.context, b.layout, b.dtype)
        and _same(a.extra, b.extra)
        and _same(a.kwargs, b.kwargs)
    )


@contextmanager
def _capturing(pipe: Any, recorder: _Recorder, schedule_kwargs: dict) -> Iterator[None]:
    """Per-instance capture hooks on the experts and wrappers on the scheduler, always removed."""
    scheduler = pipe.scheduler
    modules = list(experts(pipe).items())
    step, set_timesteps = scheduler.step, scheduler.set_timesteps

    def step_wrapper(model_output, timestep, sample, *args, **kwargs):
        sigma = float(scheduler.sigmas[step_index(scheduler)])
        out = step(model_output, timestep, sample, *args, **kwargs)
        prev = out[0] if isinstance(out, tuple) else out.prev_sample
        recorder.close_step(sigma, model_output, sample, prev)
        return out

    def set_timesteps_wrapper(*args, **kwargs):
        bound = inspect.signature(set_timesteps).bind(*args, **kwargs).arguments
        schedule_kwargs.clear()
        schedule_kwargs.update({k: v for k, v in bound.items() if k not in ("device", "kwargs") and v is not None})
        return set_timesteps(*args, **kwargs)

    def recording(method: Callable, keep: Callable[[tuple], dict[str, torch.Tensor | None]]) -> Callable:
        def wrapper(*args, **kwargs):
            out = method(*args, **kwargs)
            recorder.inpaint.update({k: v.detach().clone() for k, v in keep(out).items() if v is not None})
            return out

        return functools.wraps(method)(wrapper)

    positions = INPAINT_LATENTS.get(type(pipe).__name__)
    try:
        for name, module in modules:
            HookRegistry.check_if_exists_or_initialize(module).register_hook(
                _CaptureHook(name, recorder.pending), _HOOK
            )
        override(scheduler, "step", functools.wraps(step)(step_wrapper))
        override(scheduler, "set_timesteps", functools.wraps(set_timesteps)(set_timesteps_wrapper))
        if positions is not None:
            noise, image = positions
            part = lambda out, i: out[i] if isinstance(out, tuple) and i < len(out) else None  # noqa: E731
            override(
                pipe,
                "prepare_latents",
                recording(pipe.prepare_latents, lambda out: {"noise": part(out, noise), "image": part(out, image)}),
            )
            override(pipe, "prepare_mask_latents", recording(pipe.prepare_mask_latents, lambda out: {"mask": out[0]}))
        yield
    finally:
        for _, module in modules:
            registry = getattr(module, "_diffusers_hook", None)
            if registry is not None and registry.get_hook(_HOOK) is not None:
                registry.remove_hook(_HOOK, recurse=False)
        restore(scheduler, "step", "set_timesteps")
        restore(pipe, "prepare_latents", "prepare_mask_latents")


def _blend(recorder: _Recorder, pipe: Any) -> Blend | None:
    """The inpainting blend of a recorded generation, where the pipeline changed the latents between
    scheduler steps (SD3 blends only when its transformer takes the latents alone); its mask as the
    pipeline used it (one CFG half)."""
    if not recorder.changed:
        return None
    if set(recorder.inpaint) != {"mask", "image", "noise"}:
        raise ValueError(
            f"{type(pipe).__name__} changes the latents between scheduler steps (an inpainting blend?); "
            f"budcache replays the inpainting loops of {', '.join(INPAINT_LATENTS)}"
        )
    image = recorder.inpaint["image"]
    return Blend(recorder.inpaint["mask"][: image.shape[0]], image, recorder.inpaint["noise"])


def _call_settings(pipe: Any, kwargs: dict) -> dict[str, Any]:
    """The pipeline call's arguments with defaults filled in (guidance scales and the like)."""
    signature = inspect.signature(type(pipe).__call__)
    settings = {n: p.default for n, p in signature.parameters.items() if p.default is not inspect.Parameter.empty}
    settings.update(kwargs)
    return {k: v for k, v in settings.items() if isinstance(v, (int, float, str, bool, type(None)))}


_SET_BY_CALIBRATION = {
    "num_inference_steps": "the step count is calibrate's third argument",
    "output_type": "the search replays latents",
    "generator": "seeded by seed or seeds",
}
_SIZES = ("height", "width", "num_frames")


def _check_sizes(sizes: Any, prompts: Sequence[Any], call_kwargs: dict) -> None:
    """``sizes``: None, or a non-empty list of (height, width) or (height, width, num_frames) positive integers, not
    given beside the sizes of the call arguments or prompts."""
    if sizes is None:
        return
    check_type("sizes", sizes, (list, tuple), "a list of (height, width) pairs")
    if not sizes:
        raise CalibrationError("sizes: give at least one (height, width), or leave sizes out")
    for size in sizes:
        if not (
            isinstance(size, (list, tuple))
            and len(size) in (2, 3)
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
        ):
            raise CalibrationError(
                f"sizes: each size is (height, width) or (height, width, num_frames) of positive integers, got {size!r}"
            )
    given = sorted(
        {k for k in _SIZES if k in call_kwargs} | {k for p in prompts if isinstance(p, dict) for k in p if k in _SIZES}
    )
    if given:
        raise CalibrationError(f"{given[0]}: sizes sets the size of every call; give sizes or {given[0]}, not both")


def _check_calibration(pipe: Any, prompts: Any, num_inference_steps: Any, seeds: Any, call_kwargs: dict) -> None:
    """Every argument of :func:`calibrate` before the first call (see :mod:`budcache.checks`)."""
    check_pipeline(pipe)
    if not hasattr(pipe.scheduler, "sigmas"):
        raise CalibrationError(
            f"pipe.scheduler: {type(pipe.scheduler).__name__} has no sigma schedule; budcache needs "
            "a flow-matching scheduler"
        )
    check_type("prompts", prompts, (list, tuple), "a list of prompt strings or dicts of call arguments")
    if not prompts:
        raise CalibrationError("prompts: calibrate needs at least one prompt, got an empty list")
    bad = next((p for p in prompts if not isinstance(p, (str, dict))), None)
    if bad is not None:
        raise ArgumentTypeError(f"prompts: each prompt must be a string or a dict of call arguments, got {bad!r}")
    check_int("num_inference_steps", num_inference_steps, 1, error=CalibrationError)
    if seeds is not None and len(seeds) != len(prompts):
        raise CalibrationError(f"seeds: {len(seeds)} seeds for {len(prompts)} prompts; give one per prompt")
    in_prompts = sorted({k for p in prompts if isinstance(p, dict) for k in p})
    fixed = next((a for a in _SET_BY_CALIBRATION if a in {*call_kwargs, *in_prompts}), None)
    if fixed is not None:
        raise CalibrationError(f"{fixed}: calibrate sets it in every call ({_SET_BY_CALIBRATION[fixed]}); leave it out")
    check_call_arguments(pipe, "call arguments", list(call_kwargs))
    check_call_arguments(pipe, "prompts", in_prompts)


def calibrate(
    pipe: Any,
    prompts: Sequence[str | dict[str, Any]],
    num_inference_steps: int,
    *,
    seed: int = 0,
    progress: bool = True,
    seeds: Sequence[int] | None = None,
    sizes: Sequence[tuple[int, ...]] | None = None,
    **call_kwargs: Any,
) -> Calibration:
    """Run ``pipe`` once per prompt with full compute and capture what the search replays.

    ``prompts``: strings, or dicts of call arguments (e.g. ``prompt_embeds`` for a pipeline
    without text encoder). ``call_kwargs`` go to every call (height, width, guidance_scale,
    negative_prompt, ...). Prompt ``i`` uses the generator seed ``seed + i`` (or ``seeds[i]``).
    ``sizes``: several sizes, ``[(height, width), ...]`` (or ``(height, width, num_frames)``): every prompt runs
    at every size (the first size first), and a plan searched on the calibration serves all of them and the sizes
    between (their schedules are time shifts of one another; see :class:`~budcache.plan.CachePlan`'s ``shifts``).
    Prompts given as dicts may also carry their own ``height`` and ``width``.
    """
    _check_calibration(pipe, prompts, num_inference_steps, seeds, call_kwargs)
    _check_sizes(sizes, prompts, call_kwargs)
    device = getattr(pipe, "_execution_device", None) or torch.device("cpu")
    runs = [(i, prompt, dict(zip(_SIZES, size))) for size in (sizes or [()]) for i, prompt in enumerate(prompts)]
    captures, begins, calib = [], set(), None
    for i, prompt, size in tqdm(runs, desc="calibrating", disable=not progress):
        kwargs = {**call_kwargs, **size, **(prompt if isinstance(prompt, dict) else {"prompt": prompt})}
        kwargs.update(
            num_inference_steps=num_inference_steps,
            output_type="latent",
            generator=torch.Generator(device).manual_seed(seed + i if seeds is None else seeds[i]),
        )
        recorder = _Recorder()
        schedule_kwargs: dict[str, Any] = {}
        with torch.no_grad(), _capturing(pipe, recorder, schedule_kwargs):
            pipe(**kwargs)
        begin = getattr(pipe.scheduler, "begin_index", None) or 0  # image-to-image: strength < 1
        begins.add(begin)
        if len(recorder.steps) != num_inference_steps - begin:
            raise RuntimeError(
                f"the pipeline ran {len(recorder.steps)} scheduler steps, expected {num_inference_steps - begin}"
            )
        latents, final = recorder.latents, recorder.final
        assert latents is not None and final is not None  # set by the steps that ran (a pipeline runs at least one)
        sigmas = [s.sigma for s in recorder.steps] + [float(pipe.scheduler.sigmas[-1])]
        blend = _blend(recorder, pipe)
        final = final if blend is None else blend(final, sigmas[-1])  # blended with the image too
        captures.append(
            Capture(
                latents,
                final,
                recorder.steps,
                _call_settings(pipe, kwargs),
                blend,
                sigmas,
                dict(schedule_kwargs),
            )
        )
        if len(begins) > 1:
            raise CalibrationError("prompts: the calls started at different steps (strength); use one strength")
        calib = calib or Calibration(pipe, captures, sigmas, dict(schedule_kwargs), begin)
        calib.shifts(captures[-1:])  # refused where this size's schedule is not a shift of the first's
    assert calib is not None  # runs holds every prompt (at least one) at every size
    return calib
