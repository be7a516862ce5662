"""Replay captured pipeline steps at any (x, sigma) and search a plan on them.

A step's transformer calls are re-run with the captured conditioning at the new latent and
timestep, and combined into a velocity the way the pipeline does it (its CFG formula). The
combination is the one per-pipeline piece: one row of :data:`COMBINE`. Calibration checks the
replay against the pipeline's own velocities, so a wrong row fails loudly instead of searching
for another model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch

from .capture import Calibration, Call, Capture, Step, input_names, to_hidden
from .plan import CachePlan
from .residual import StackState, reuse_for, stack_hooks
from .search import Batch, Evaluator, SearchConfig, search_plan

Combine = Callable[[list[Any], list[Call], dict[str, Any], torch.Tensor], torch.Tensor]  # outputs, calls, settings, x


def _guided(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    return uncond + scale * (cond - uncond)


def _by_context(outputs: list[Any], calls: list[Call]) -> tuple[torch.Tensor, torch.Tensor]:
    """(cond, uncond): by cache context, or in call order (every pipeline calls cond first)."""
    named = {c.context: o for c, o in zip(calls, outputs)}
    for cond, uncond in (("cond", "uncond"), ("pred_cond", "pred_uncond")):
        if cond in named and uncond in named:
            return named[cond], named[uncond]
    return outputs[0], outputs[1]


def _two_calls(scale: Callable[[dict, str], float], tokens: slice | None = None) -> Combine:
    """A cond and an uncond call per step (Flux true CFG, Wan, Chroma, CogView4, ...); ``tokens``
    (a slice of the last ``x.shape[1]`` or first) keeps the latent tokens of the outputs."""

    def combine(outputs: list[Any], calls: list[Call], settings: dict, x: torch.Tensor) -> torch.Tensor:
        if tokens is not None:
            n = x.shape[1]
            outputs = [o[:, -n:] if tokens == "last" else o[:, :n] for o in outputs]
        if len(outputs) == 1:
            return outputs[0]
        cond, uncond = _by_context(outputs, calls)
        return _guided(cond, uncond, scale(settings, calls[0].module))

    return combine


def _setting(name: str) -> Callable[[dict, str], float]:
    return lambda settings, _: settings[name]


def _wan_scale(settings: dict, module: str) -> float:
    second = settings.get("guidance_scale_2")
    return second if module == "transformer_2" and second is not None else settings["guidance_scale"]


def _qwen_image(outputs: list[Any], calls: list[Call], settings: dict, x: torch.Tensor) -> torch.Tensor:
    if len(outputs) == 1:
        return outputs[0]
    cond, uncond = _by_context(outputs, calls)
    guided = _guided(cond, uncond, settings["true_cfg_scale"])
    return guided * (cond.norm(dim=-1, keepdim=True) / guided.norm(dim=-1, keepdim=True))


def _batched(outputs: list[Any], calls: list[Call], settings: dict, x: torch.Tensor) -> torch.Tensor:
    """One call on the batch ``[uncond, cond]`` (SD3, Sana)."""
    (out,) = outputs
    if calls[0].layout[1] == 1:
        return out
    uncond, text = out.chunk(2)
    return _guided(text, uncond, settings["guidance_scale"])


def _z_image(outputs: list[Any], calls: list[Call], settings: dict, x: torch.Tensor) -> torch.Tensor:
    out = torch.stack([o.float() for o in outputs[0]])
    if calls[0].layout[1] == 2:
        pos, neg = out.chunk(2)
        pred = pos + settings["guidance_scale"] * (pos - neg)
        limit = float(settings.get("cfg_normalization") or 0.0)
        if limit > 0:
            dims = tuple(range(1, pred.dim()))
            cap = torch.linalg.vector_norm(pos, dim=dims, keepdim=True) * limit
            norm = torch.linalg.vector_norm(pred, dim=dims, keepdim=True)
            pred = torch.where(norm > cap, pred * (cap / norm), pred)
        out = pred
    return -out.squeeze(2)


def _guider(outputs: list[Any], calls: list[Call], settings: dict, x: torch.Tensor) -> torch.Tensor:
    """The pipeline's own ``guider`` component (HunyuanVideo 1.5)."""
    if len(outputs) == 1:
        return outputs[0]
    cond, uncond = _by_context(outputs, calls)
    return settings["guider"].forward(cond, uncond).pred


def _single(outputs: list[Any], calls: list[Call], settings: dict, x: torch.Tensor) -> torch.Tensor:
    if len(outputs) != 1 or calls[0].layout[1] != 1:
        raise ValueError(
            f"budcache knows no guidance rule for this pipeline ({len(outputs)} transformer call(s) per step, "
            f"{calls[0].layout[1]} samples per latent); "
            f"supported: {', '.join(sorted(COMBINE))}, and any pipeline with one unguided call per step"
        )
    return outputs[0]


COMBINE: dict[str, Combine] = {
    "FluxPipeline": _two_calls(_setting("true_cfg_scale")),
    "Flux2KleinPipeline": _two_calls(_setting("guidance_scale"), tokens="first"),
    "WanPipeline": _two_calls(_wan_scale),
    "ChromaPipeline": _two_calls(_setting("guidance_scale")),
    "CogView4Pipeline": _two_calls(_setting("guidance_scale")),
    "QwenImagePipeline": _qwen_image,
    "QwenImage21Pipeline": _two_calls(_setting("true_cfg_scale"), tokens="last"),
    "StableDiffusion3Pipeline": _batched,
    "SanaPipeline": _batched,
    "ZImagePipeline": _z_image,
    "HunyuanVideo15Pipeline": _guider,
}


def combine_for(pipe: Any) -> Combine:
    """The CFG combination of ``pipe``'s class; pipelines not listed may only make one
    unguided call per step."""
    for cls in type(pipe).__mro__:
        if cls.__name__ in COMBINE:
            return COMBINE[cls.__name__]
    return _single


class PipelineDenoiser:
    """The velocity of one captured generation at (x, sigma), computing or reusing per call.

    Conditioning comes from the captured step with that sigma (the nearest one off the grid,
    where timesteps follow the affine sigma -> timestep map of the capture). Residual caches
    hold one entry per call (one per CFG branch).
    """

    def __init__(self, calib: Calibration, capture: Capture, stacks: dict[str, StackState] | None):
        self.capture, self.stacks, self.executions = capture, stacks, 0
        self.experts, self.combine = calib.experts(), combine_for(calib.pipe)
        self.settings = {**capture.settings, "guider": getattr(calib.pipe, "guider", None)}
        self.grid = {s.sigma: s for s in capture.steps}
        first, last = capture.steps[0], capture.steps[-1]
        span = last.sigma - first.sigma
        self.slopes = [(b.double() - a.double()) / span if span else torch.zeros_like(a, dtype=torch.float64)
                       for a, b in zip(first.timesteps, last.timesteps)]

    def _step(self, sigma: float) -> tuple[Step, list[torch.Tensor]]:
        step = self.grid.get(sigma)
        if step is not None:
            return step, step.timesteps
        step = min(self.capture.steps, key=lambda s: abs(s.sigma - sigma))
        first = self.capture.steps[0]
        timesteps = [(a.double() + slope * (sigma - first.sigma)).to(a.dtype)
                     for a, slope in zip(first.timesteps, self.slopes)]
        return step, timesteps

    def _velocity(self, x: torch.Tensor, sigma: float, cache: torch.Tensor | None) -> tuple[torch.Tensor, list]:
        step, timesteps = self._step(sigma)
        outputs, residuals = [], []
        for i, call in enumerate(step.calls):
            module = self.experts[call.module]
            stack = self.stacks[call.module] if self.stacks is not None else None
            hidden, t = input_names(module)
            try:
                if stack is not None and cache is not None:
                    stack.mode, stack.residual = "reuse", cache[i]
                out = module(**call.kwargs, **{hidden: to_hidden(call.layout, x, call.dtype, call.extra), t: timesteps[i]})
                if stack is not None:
                    residuals.append(stack.residual)
            finally:
                if stack is not None:
                    stack.reset()
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
def denoisers(calib: Calibration, reuse: str) -> Iterator[Callable[[Capture], PipelineDenoiser]]:
    """Yields ``make(capture)``; residual hooks on every expert live only inside the ``with`` block."""
    if reuse not in ("residual", "output"):
        raise ValueError(f"reuse must be 'residual' or 'output', got {reuse!r}")
    with ExitStack() as hooks:
        stacks = None
        if reuse == "residual":
            stacks = {name: hooks.enter_context(stack_hooks(m)) for name, m in calib.experts().items()}
        yield lambda capture: PipelineDenoiser(calib, capture, stacks)


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))


def _tolerance(calib: Calibration) -> float:
    return 1e-3 if calib.pipe.transformer.dtype == torch.float32 else 5e-2


def check_replay(calib: Calibration) -> float:
    """Replay step 0 of the first capture and compare with the velocity the pipeline used;
    raises when the replay does not reproduce the pipeline. Returns the relative error."""
    capture = calib.captures[0]
    with torch.no_grad(), denoisers(calib, "output") as make:
        v, _ = make(capture).compute(capture.latents.float(), calib.sigmas[0])
    error = _relative_error(v, capture.steps[0].velocity)
    if not error <= _tolerance(calib):
        raise ValueError(
            f"budcache's replay of {calib.pipeline} does not reproduce the pipeline's velocity at step 0 "
            f"(relative error {error:.3g}); its guidance is not supported (supported pipelines: "
            f"{', '.join(sorted(COMBINE))}, and any pipeline with one unguided transformer call per step)"
        )
    return error


def search(
    calib: Calibration,
    budget: int,
    *,
    reuse: str = "residual",
    rule: str = "repeat",
    config: SearchConfig = SearchConfig(),
    validation: Calibration | None = None,
    metric: str = "mse",
    max_state_mb: float = 1024.0,
    history: str | Path | None = None,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    resume: bool = False,
) -> CachePlan:
    """Search the best ``budget``-of-K plan for the calibrated pipeline (K = calibration steps).

    Steps where the transformer calls change (e.g. the first step of Wan2.2's second expert)
    always compute, and the cache restarts there.

    ``validation``: other captures on which a predictive rule must beat ``repeat`` (default: the
    calibration ones). ``history``: where to plot the search history. ``checkpoint`` / ``resume``:
    save evaluations as they come and continue an interrupted search (see ``search_plan``).
    """
    check_replay(calib)
    reuse = reuse_for(calib.pipe.transformer, reuse)
    forced = calib.forced_steps()
    config = dataclasses.replace(config, forced=tuple(sorted({*config.forced, *forced})))
    with denoisers(calib, reuse) as make:
        evaluate = Evaluator([Batch(make(c), c.latents.float()) for c in calib.captures], calib.sigmas, metric,
                             max_state_mb=max_state_mb, rule=rule, rules_in_play=config.rules, restarts=forced)
        error = max(_relative_error(t, c.final) for t, c in zip(evaluate.teacher, calib.captures))
        if not error <= 10 * _tolerance(calib):
            raise ValueError(f"the replayed full-compute trajectory differs from the pipeline's result (relative "
                             f"error {error:.3g}); this pipeline's denoising loop is not what budcache replays")
        check = None
        if validation is not None:
            if validation.sigmas != calib.sigmas:
                raise ValueError("validation captures use another sigma schedule than the calibration ones")
            check = Evaluator([Batch(make(c), c.latents.float()) for c in validation.captures], calib.sigmas,
                              metric, max_state_mb=0, rule=rule, rules_in_play=config.rules, restarts=forced)
        plan, result = search_plan(evaluate, budget, reuse=reuse, model=calib.pipe.transformer, config=config,
                                   euler_sigmas=calib.default_sigmas(budget), validation=check, progress=progress,
                                   checkpoint=checkpoint, resume=resume)
    plan.boundary_ratio = calib.boundary_ratio
    if history is not None:
        from .plots import plot_history

        plot_history({f"B={budget}": result}, history)
    return plan
