"""Stage 2: learn the sigma schedule of a fixed plan by teacher-student distillation.

The K+1 sigmas are parametrized so they stay strictly decreasing with fixed endpoints: K
logits give positive increments by a softmax, and the schedule is ``sigma_max`` minus their
cumulative sum scaled to ``sigma_max - sigma_min`` (initialised at the plan's schedule). The
student is the cached sampler with the plan's mask and rule over those sigmas; the loss is the
MSE between its final latent and the full-compute teacher's, for the frozen network. Gradients
are accumulated over the calibration batches, clipped, and applied by AdamW under a cosine
learning rate; each step is checkpointed, so backpropagation through K steps keeps only the
steps' inputs and outputs, not their activations. The schedule with the best
validation loss is kept, and the input schedule is returned if nothing beats it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from ._stage import callable_module
from .plan import CachePlan, PlanError
from .sampling.denoisers import Batch, Checkpointed, Denoiser
from .sampling.loop import sample
from .sampling.solver import Euler, Solver


@dataclass
class AlignConfig:
    epochs: int = 80
    lr: float = 0.2
    weight_decay: float = 0.0
    clip: float = 1.0
    checkpointing: bool = True


@dataclass
class AlignResult:
    sigmas: list[float]
    initial: list[float]
    train_loss: list[float] = field(default_factory=list)  # per epoch
    validation_loss: list[float] = field(default_factory=list)  # [initial, after epoch 1, ...]
    best_epoch: int = 0  # 0: the input schedule was kept
    interrupted: bool = False  # Ctrl-C / SIGTERM stopped the epochs; the best schedule so far is kept

    @property
    def improved(self) -> bool:
        return self.best_epoch > 0


class SigmaSchedule(torch.nn.Module):
    """Strictly decreasing sigmas with fixed endpoints: softmax increments, cumulative sum.

    ``pinned``: indices of sigmas that keep their value too (the endpoints always do); the sigmas
    between two pinned ones move within that segment only. Pinning both sides of an expert switch
    keeps every step with the expert the pipeline gives it (Wan2.2's boundary)."""

    def __init__(self, sigmas: Sequence[float], pinned: Collection[int] = ()):
        super().__init__()
        s = torch.as_tensor(sigmas, dtype=torch.float64)
        if s.dim() != 1 or len(s) < 2 or not bool((s[:-1] > s[1:]).all()):
            raise PlanError("a schedule to align must be strictly decreasing with at least 2 values")
        knots = sorted({0, len(s) - 1, *(int(i) for i in pinned if 0 <= int(i) < len(s))})
        self.segments = list(zip(knots[:-1], knots[1:]))
        self.register_buffer("knots", s[knots].clone())
        self.register_buffer("high", s[0].clone())
        self.register_buffer("low", s[-1].clone())
        logits = torch.empty(len(s) - 1, dtype=torch.float64)
        for a, b in self.segments:
            logits[a:b] = ((s[a:b] - s[a + 1:b + 1]) / (s[a] - s[b])).log()
        self.logits = torch.nn.Parameter(logits)

    def forward(self) -> torch.Tensor:
        parts = [self.knots[:1]]
        for i, (a, b) in enumerate(self.segments):
            hi, lo = self.knots[i], self.knots[i + 1]
            steps = torch.softmax(self.logits[a:b], 0).cumsum(0)
            parts += [hi - (hi - lo) * steps[:-1], lo[None]]
        return torch.cat(parts)


def boundary_pins(restarts: Collection[int]) -> list[int]:
    """The sigmas to pin so no step crosses a restart (an expert switch): both sides of each."""
    return sorted({i for k in restarts for i in (k - 1, k)})


def require_euler(solver: Solver) -> None:
    """Stage 2 differentiates through the Euler step; refuse another solver with one clear line."""
    if not isinstance(solver, Euler):
        raise PlanError(f"stage 2 learns sigmas through the Euler step, and this model steps with {solver.name}; "
                        "align plans of pipelines that run FlowMatchEuler (or the demo with --scheduler euler)")


def student(denoiser: Denoiser, noise: torch.Tensor, sigmas: torch.Tensor, mask: Sequence[int],
            rules: Sequence[str], checkpointing: bool = True, restarts: Collection[int] = ()) -> torch.Tensor:
    """The one cached loop over ``sigmas`` (a tensor: differentiable in them); with
    ``checkpointing`` every call keeps only its inputs for backward."""
    return sample(Checkpointed(denoiser) if checkpointing else denoiser, noise, sigmas.to(noise.dtype), mask, rules,
                  restarts=restarts, check_finite=False)


@torch.no_grad()
def _teacher(batch: Batch, sigmas: Sequence[float], restarts: Collection[int]) -> torch.Tensor:
    return sample(batch.denoiser, batch.noise, sigmas, [1] * (len(sigmas) - 1), restarts=restarts,
                  check_finite=False)


def _loss(batches, teachers, sigmas, plan: CachePlan, checkpointing: bool, backward: bool,
          restarts: Collection[int]) -> float:
    """Mean MSE to the teachers over all batches; with ``backward`` its gradient reaches ``sigmas``
    (each batch backpropagates to a leaf copy of them and frees its own graph; the schedule's graph
    is used once, after the last batch)."""
    total, n = 0.0, sum(b.noise.shape[0] for b in batches)
    leaf = sigmas.detach().requires_grad_() if backward else sigmas
    for b, t in zip(batches, teachers):
        x = student(b.denoiser, b.noise, leaf, plan.mask, plan.step_rules, checkpointing, restarts)
        loss = (x - t).pow(2).mean() * (b.noise.shape[0] / n)
        if not torch.isfinite(loss):
            return float("inf")
        if backward:
            loss.backward()
        total += float(loss.detach())
    if backward:
        sigmas.backward(leaf.grad)
    return total


def align(
    plan: CachePlan,
    batches: Sequence[Batch] | Any,
    validation: Sequence[Batch] | Any = None,
    config: AlignConfig = AlignConfig(),
    teacher_sigmas: Sequence[float] | None = None,
    progress: bool = True,
    restarts: Collection[int] = (),
) -> tuple[CachePlan, AlignResult]:
    """Learn the sigmas of ``plan`` (its mask and rules fixed) on ``batches``; keep the schedule with
    the best loss on ``validation`` (default: the calibration batches). ``batches`` may be a
    :class:`~budcache.Calibration` of a pipeline (``validation``: another one, or None): then
    ``budcache.align(plan, calib, validation_calib)`` replays its captures, full compute over the
    calibrated schedule is the teacher, and a plan without sigmas starts from that schedule. The teacher runs full
    compute over ``teacher_sigmas`` (default: the plan's schedule); ``restarts``: steps where the
    cache restarts (another expert). Ctrl-C (KeyboardInterrupt) ends the epochs early with the best
    schedule so far (``result.interrupted``)."""
    from .calibration.capture import Calibration

    if isinstance(batches, Calibration):
        return _align_calibrated(plan, batches, validation, config, progress)
    if plan.sigmas is None:
        if teacher_sigmas is None:
            raise PlanError("this plan has no sigmas (the pipeline's default schedule) and no teacher_sigmas were "
                            "given; pass the schedule it runs at as teacher_sigmas (or align on a Calibration)")
        plan = dataclasses.replace(plan, sigmas=[float(s) for s in teacher_sigmas])  # stored explicitly
    validation = list(validation or batches)
    teacher = teacher_sigmas or plan.sigmas
    teachers = [_teacher(b, teacher, restarts) for b in batches]
    val_teachers = [_teacher(b, teacher, restarts) for b in validation]
    schedule = SigmaSchedule(plan.sigmas, pinned=boundary_pins(restarts))
    opt = torch.optim.AdamW(schedule.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    lr = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, config.epochs))
    with torch.no_grad():
        best = _loss(validation, val_teachers, schedule(), plan, False, False, restarts)
    result = AlignResult(sigmas=list(plan.sigmas), initial=list(plan.sigmas), validation_loss=[best])
    bar = tqdm(range(config.epochs), desc=f"align B={plan.budget}/{plan.num_steps}", disable=not progress, leave=False)
    try:
        for epoch in bar:
            opt.zero_grad()
            with torch.enable_grad():  # also when called under no_grad (e.g. from the comparison)
                train = _loss(batches, teachers, schedule(), plan, config.checkpointing, True, restarts)
            if not torch.isfinite(torch.tensor(train)):
                break
            torch.nn.utils.clip_grad_norm_(schedule.parameters(), config.clip)
            opt.step()
            lr.step()
            with torch.no_grad():
                sigmas = schedule()
                val = _loss(validation, val_teachers, sigmas, plan, False, False, restarts)
            result.train_loss.append(train)
            result.validation_loss.append(val)
            if val < best:
                best, result.best_epoch, result.sigmas = val, epoch + 1, sigmas.tolist()
            bar.set_postfix(train=f"{train:.3g}", val=f"{val:.3g}", best=f"{best:.3g}", refresh=False)
    except KeyboardInterrupt:
        result.interrupted = True
    for i in (0, len(plan.sigmas) - 1, *boundary_pins(restarts)):  # endpoints and pins exactly as given
        result.sigmas[i] = plan.sigmas[i]
    return dataclasses.replace(plan, sigmas=result.sigmas), result


def _align_calibrated(plan: CachePlan, calib, validation, config: AlignConfig,
                      progress: bool) -> tuple[CachePlan, AlignResult]:
    """:func:`align` on a calibrated pipeline: its captures (and ``validation`` captures) replayed, the
    cache restarting (and the schedule pinned) at expert switches; a plan without sigmas starts from
    the calibrated schedule."""
    from .calibration.replay import pipeline_source

    with pipeline_source(calib, plan.reuse, validation=validation) as source:
        plan.check_model(source.model)
        require_euler(source.solver)
        if plan.sigmas is not None and len(plan.sigmas) != len(source.sigmas):
            raise PlanError(f"the plan has {plan.num_steps} steps, the calibration {source.num_steps}")
        return align(plan, source.batches("calib"),
                     source.batches("validation") if source.has("validation") else None, config,
                     teacher_sigmas=source.sigmas, progress=progress, restarts=source.restarts)


callable_module(__name__, align)
