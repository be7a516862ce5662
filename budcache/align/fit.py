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
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..checks import check_int, check_type
from ..errors import BudcacheError
from ..plan import CachePlan, PlanError
from ..sampling.denoisers import Batch, Checkpointed, Denoiser
from ..sampling.loop import sample
from ..sampling.multistep import differentiable, require_differentiable
from ..sampling.reschedule import with_sigmas
from ..sampling.solver import Euler, Retimed, Solver
from . import checkpoint as align_checkpoint
from .schedule import ModelTimes, SigmaSchedule, boundary_pins


@dataclass
class AlignConfig:
    """``epochs`` of AdamW at ``lr`` (cosine decay), gradients clipped to ``clip``; ``checkpointing``:
    recompute each step's activations in backward. ``model_times``: then also learn, beside the
    sigmas, the noise level the model is told at each step (LD3's decoupled times), for another
    ``epochs`` from the aligned sigmas; kept only where it improves the validation loss."""

    epochs: int = 80
    lr: float = 0.01
    weight_decay: float = 0.0
    clip: float = 1.0
    checkpointing: bool = True
    model_times: bool = False

    def __post_init__(self) -> None:
        check_int("AlignConfig.epochs", self.epochs, 0)
        for name in ("lr", "clip"):
            if not (isinstance(getattr(self, name), (int, float)) and getattr(self, name) > 0):
                raise BudcacheError(f"AlignConfig.{name} must be a number above 0, got {getattr(self, name)!r}")


@dataclass
class AlignResult:
    sigmas: list[float]
    initial: list[float]
    train_loss: list[float] = field(default_factory=list)  # per epoch
    validation_loss: list[float] = field(default_factory=list)  # [initial, after epoch 1, ...]
    best_epoch: int = 0  # 0: the input schedule was kept
    interrupted: bool = False  # Ctrl-C / SIGTERM stopped the epochs; the best schedule so far is kept
    model_sigmas: list[float] | None = None  # decoupled model times, where they won on validation

    @property
    def improved(self) -> bool:
        return self.best_epoch > 0


def student(
    denoiser: Denoiser,
    noise: torch.Tensor,
    solver: Solver,
    mask: Sequence[int],
    rules: Sequence[str],
    checkpointing: bool = True,
    restarts: Collection[int] = (),
) -> torch.Tensor:
    """The one cached loop over ``solver`` (built on sigma tensors: differentiable in them); with
    ``checkpointing`` every call keeps only its inputs for backward."""
    return sample(
        Checkpointed(denoiser) if checkpointing else denoiser,
        noise,
        solver,
        mask,
        rules,
        restarts=restarts,
        check_finite=False,
    )


@torch.no_grad()
def _teacher(batch: Batch, solver: Solver, restarts: Collection[int]) -> torch.Tensor:
    return sample(
        batch.denoiser, batch.noise, solver, [1] * (len(solver.sigmas) - 1), restarts=restarts, check_finite=False
    )


Build = Callable[..., Solver]  # the learned tensors (sigmas[, model sigmas]) -> the student's solver


def student_solver(solver: Solver) -> Build:
    """How the learned tensors become the student's solver: ``solver``'s step made differentiable in the
    sigmas (Euler, UniPC, DPM-Solver++; :func:`~budcache.sampling.multistep.differentiable`), its model
    told the learned model sigmas where there are any."""

    def build(sigmas: torch.Tensor, told: torch.Tensor | None = None) -> Solver:
        step = differentiable(solver, sigmas)
        return step if told is None else Retimed(step, told)

    return build


def _loss(
    batches,
    teachers,
    tensors: Sequence[torch.Tensor],
    build: Build,
    plan: CachePlan,
    checkpointing: bool,
    backward: bool,
    restarts: Collection[int],
) -> float:
    """Mean MSE to the teachers over all batches of the student over ``build(*tensors)``; with
    ``backward`` its gradient reaches ``tensors`` (each batch backpropagates to leaf copies of them and
    frees its own graph; the tensors' graph is used once, after the last batch)."""
    total, n = 0.0, sum(b.noise.shape[0] for b in batches)
    leaves = [t.detach().requires_grad_() for t in tensors] if backward else list(tensors)
    for b, teacher in zip(batches, teachers):
        solver = build(*(leaf.to(b.noise.dtype) for leaf in leaves))
        x = student(b.denoiser, b.noise, solver, plan.mask, plan.step_rules, checkpointing, restarts)
        loss = (x - teacher).pow(2).mean() * (b.noise.shape[0] / n)
        if not torch.isfinite(loss):
            return float("inf")
        if backward:
            loss.backward()
        total += float(loss.detach())
    if backward:
        torch.autograd.backward(
            list(tensors), [torch.zeros_like(leaf) if leaf.grad is None else leaf.grad for leaf in leaves]
        )
    return total


@dataclass
class _Fit:
    """What one run of epochs needs: the data, the teachers and how the tensors become a solver."""

    batches: Sequence[Batch]
    teachers: list[torch.Tensor]
    validation: Sequence[Batch]
    val_teachers: list[torch.Tensor]
    plan: CachePlan
    build: Build
    config: AlignConfig
    restarts: Collection[int]
    save: Callable[[dict], None] | None = None  # writes the state after every epoch (a checkpoint)

    def train(self, tensors: Callable[[], list[torch.Tensor]]) -> float:
        """The calibration loss of ``tensors()``, its gradient accumulated on their parameters."""
        with torch.enable_grad():  # also when called under no_grad (e.g. from the comparison)
            return _loss(
                self.batches,
                self.teachers,
                tensors(),
                self.build,
                self.plan,
                self.config.checkpointing,
                True,
                self.restarts,
            )

    @torch.no_grad()
    def validate(self, tensors: Sequence[torch.Tensor]) -> float:
        return _loss(self.validation, self.val_teachers, tensors, self.build, self.plan, False, False, self.restarts)

    def epochs(
        self,
        modules: Sequence[torch.nn.Module],
        tensors: Callable[[], list[torch.Tensor]],
        result: AlignResult,
        best: float,
        desc: str,
        progress: bool,
        phase: int = 0,
        saved: dict | None = None,
    ) -> tuple[float, list[list[float]] | None]:
        """Train ``modules`` (``tensors()``: their outputs) for the configured epochs, appending the losses to
        ``result``; returns the best validation loss and the tensors (as lists) that reached it, if any
        beat ``best``. ``saved``: a checkpoint of this phase to go on from; with ``self.save`` the state
        is written after every epoch. Ctrl-C ends the epochs early (``result.interrupted``)."""
        params = [p for m in modules for p in m.parameters()]
        opt = torch.optim.AdamW(params, lr=self.config.lr, weight_decay=self.config.weight_decay)
        lr = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, self.config.epochs))
        won, done = None, 0
        if saved is not None:
            for m, state in zip(modules, saved["modules"]):
                m.load_state_dict(state)
            opt.load_state_dict(saved["optimizer"])
            lr.load_state_dict(saved["lr"])
            won, done = saved["won"], saved["epoch"]
        bar = tqdm(
            range(done, self.config.epochs),
            desc=desc,
            disable=not progress,
            leave=False,
            initial=done,
            total=self.config.epochs,
        )
        try:
            for epoch in bar:
                opt.zero_grad()
                train = self.train(tensors)
                if not torch.isfinite(torch.tensor(train)):
                    break
                torch.nn.utils.clip_grad_norm_(params, self.config.clip)
                opt.step()
                lr.step()
                with torch.no_grad():
                    now = tensors()
                val = self.validate(now)
                result.train_loss.append(train)
                result.validation_loss.append(val)
                if val < best:
                    best, won = val, [t.tolist() for t in now]
                    result.best_epoch = len(result.validation_loss) - 1
                if self.save is not None:
                    last = phase == int(self.config.model_times) and epoch + 1 == self.config.epochs
                    self.save(
                        {
                            "phase": phase,
                            "epoch": epoch + 1,
                            "finished": last,
                            "modules": [m.state_dict() for m in modules],
                            "optimizer": opt.state_dict(),
                            "lr": lr.state_dict(),
                            "won": won,
                            "best": best,
                            "result": dataclasses.asdict(result),
                        }
                    )
                bar.set_postfix(train=f"{train:.3g}", val=f"{val:.3g}", best=f"{best:.3g}", refresh=False)
        except KeyboardInterrupt:
            result.interrupted = True
        return best, won


def align(
    plan: CachePlan,
    batches: Sequence[Batch] | Any,
    validation: Sequence[Batch] | Any = None,
    config: AlignConfig = AlignConfig(),
    teacher_sigmas: Sequence[float] | None = None,
    progress: bool = True,
    restarts: Collection[int] = (),
    solver: Solver | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
) -> tuple[CachePlan, AlignResult]:
    """Learn the sigmas of ``plan`` (its mask and rules fixed) on ``batches``; keep the schedule with
    the best loss on ``validation`` (default: the calibration batches). ``batches`` may be a
    :class:`~budcache.Calibration` of a pipeline (``validation``: another one, or None): then
    ``budcache.align(plan, calib, validation_calib)`` replays its captures, full compute over the
    calibrated schedule is the teacher, and a plan without sigmas starts from that schedule. The teacher runs full
    compute over ``teacher_sigmas`` (default: the plan's schedule); ``restarts``: steps where the
    cache restarts (another expert); ``solver``: the model's step (default Euler; UniPC and DPM-Solver++
    as a :class:`~budcache.sampling.solver.SchedulerSolver` too): the teacher takes it over
    ``teacher_sigmas``, the student its differentiable equal over the learned sigmas. With ``config.model_times``
    the model's noise levels are learned
    too (``plan.model_sigmas``), and kept only where they beat the aligned sigmas on validation.
    Ctrl-C (KeyboardInterrupt) ends the epochs early with the best schedule so far (``result.interrupted``).
    ``checkpoint``: a file the state is written to after every epoch; ``resume``: go on from it (the
    result is the one an uninterrupted run returns; :mod:`budcache.align_checkpoint`)."""
    from ..calibration.capture import Calibration

    check_type("plan", plan, CachePlan, "a CachePlan")
    check_type("config", config, AlignConfig, "an AlignConfig")
    if isinstance(batches, Calibration):
        if plan.num_steps != batches.num_steps:
            raise PlanError(
                f"plan: num_steps is {plan.num_steps}, the calibration has {batches.num_steps} steps; "
                "search the plan on this calibration"
            )
        return _align_calibrated(plan, batches, validation, config, progress, checkpoint, resume)
    if config.model_times and plan.boundary_ratio is not None:  # other restarts (Qwen-Image 2.1's step 1) go by step
        raise PlanError(
            "decoupled model times would move the timesteps that pick each expert; align this "
            "two-expert pipeline without them"
        )
    if plan.sigmas is None:
        if teacher_sigmas is None:
            raise PlanError(
                "this plan has no sigmas (the pipeline's default schedule) and no teacher_sigmas were "
                "given; pass the schedule it runs at as teacher_sigmas (or align on a Calibration)"
            )
        plan = dataclasses.replace(plan, sigmas=[float(s) for s in teacher_sigmas])  # stored explicitly
    plan = dataclasses.replace(plan, model_sigmas=None)  # what is learned starts from the steps' own sigmas
    plan_sigmas = plan.sigmas
    assert plan_sigmas is not None  # the plan's, or set from teacher_sigmas above
    solver = solver or Euler(plan_sigmas)
    require_differentiable(solver)
    validation = list(validation or batches)
    teacher_sigmas = teacher_sigmas or plan_sigmas
    saved = None
    if checkpoint is not None:  # refused before the teachers' forwards when it belongs to another alignment
        path, expected = Path(checkpoint), align_checkpoint.identity(plan, config, teacher_sigmas, batches, validation)
        saved = align_checkpoint.load(path, expected) if resume else None
    teacher = with_sigmas(solver, teacher_sigmas)
    fit = _Fit(
        batches,
        [_teacher(b, teacher, restarts) for b in batches],
        validation,
        [_teacher(b, teacher, restarts) for b in validation],
        plan,
        student_solver(solver),
        config,
        restarts,
    )
    if checkpoint is not None:
        fit.save = lambda state: align_checkpoint.save(path, {"identity": expected, **state})
    schedule = SigmaSchedule(plan_sigmas, pinned=boundary_pins(restarts))
    if saved is None:
        with torch.no_grad():
            best = fit.validate([schedule()])
        result = AlignResult(sigmas=list(plan_sigmas), initial=list(plan_sigmas), validation_loss=[best])
    else:
        result, best = AlignResult(**saved["result"]), saved["best"]
    if saved is None or saved["phase"] == 0:
        best, won = fit.epochs(
            [schedule],
            lambda: [schedule()],
            result,
            best,
            f"align B={plan.budget}/{plan.num_steps}",
            progress,
            0,
            saved,
        )
        if won is not None:
            result.sigmas = won[0]
        saved = None
    if config.model_times and not result.interrupted:
        schedule = SigmaSchedule(result.sigmas, pinned=boundary_pins(restarts))
        times = ModelTimes(plan.num_steps)

        def both() -> list[torch.Tensor]:
            sigmas = schedule()
            return [sigmas, times(sigmas)]

        best, won = fit.epochs(
            [schedule, times], both, result, best, f"times B={plan.budget}/{plan.num_steps}", progress, 1, saved
        )
        if won is not None:
            result.sigmas, result.model_sigmas = won
    for i in (0, len(plan_sigmas) - 1, *boundary_pins(restarts)):  # endpoints and pins exactly as given
        result.sigmas[i] = plan_sigmas[i]
    return dataclasses.replace(plan, sigmas=result.sigmas, model_sigmas=result.model_sigmas), result


def _align_calibrated(
    plan: CachePlan, calib, validation, config: AlignConfig, progress: bool, checkpoint: str | Path | None, resume: bool
) -> tuple[CachePlan, AlignResult]:
    """:func:`align` on a calibrated pipeline: its captures (and ``validation`` captures) replayed, the
    cache restarting (and the schedule pinned) at expert switches; a plan without sigmas starts from
    the calibrated schedule."""
    from ..calibration.replay import pipeline_source

    with pipeline_source(calib, plan.reuse, validation=validation) as source:
        source.check_one_size("align")
        plan.check_model(source.model)
        if plan.sigmas is not None and len(plan.sigmas) != len(source.sigmas):
            raise PlanError(f"the plan has {plan.num_steps} steps, the calibration {source.num_steps}")
        return align(
            plan,
            source.batches("calib"),
            source.batches("validation") if source.has("validation") else None,
            config,
            teacher_sigmas=source.sigmas,
            progress=progress,
            restarts=source.restarts,
            solver=source.solver,
            checkpoint=checkpoint,
            resume=resume,
        )
