"""A solver moved to another schedule: the same step (Euler, UniPC, DPM-Solver++, a diffusers scheduler) over
other sigmas, its model told decoupled times where given. Stage 2, plans with their own sigmas, plain sampling
over fewer steps and the time shift between sizes all run a solver this way."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence

import torch

from .multistep import DPMSolver, UniPC, native
from .solver import Euler, Retimed, SchedulerSolver, Solver


def with_sigmas(solver: Solver, sigmas: Sequence[float] | None, model_sigmas: Sequence[float] | None = None) -> Solver:
    """``solver`` over ``sigmas`` (None or the same: ``solver`` itself; a diffusers scheduler's step: see
    :func:`rescheduled`; Euler for any other), its model told ``model_sigmas`` when given (:class:`Retimed`)."""
    if not (
        sigmas is None
        or (
            len(sigmas) == len(solver.sigmas)
            and all(abs(float(a) - float(b)) <= 1e-7 for a, b in zip(sigmas, solver.sigmas))
        )
    ):
        if isinstance(solver, SchedulerSolver):
            solver = rescheduled(solver, sigmas)
        elif isinstance(solver, (UniPC, DPMSolver)):
            solver = solver.with_sigmas(sigmas)
        else:
            solver = Euler(sigmas)
    return solver if model_sigmas is None else Retimed(solver, model_sigmas)


def rescheduled(solver: SchedulerSolver, sigmas: Sequence[float] | torch.Tensor) -> Solver:
    """A scheduler's step over other sigmas (K+1 values ending in 0): its native equal where there is one
    (:func:`~.multistep.native`: Euler, UniPC, DPM-Solver++, any sigmas), else the scheduler as it sets them from
    ``set_timesteps(sigmas=...)``, refused where it takes none or changes them."""
    step = native(solver, sigmas)
    if step is not None:
        return step
    scheduler = copy.deepcopy(solver.scheduler)
    name = type(scheduler).__name__
    if "sigmas" not in inspect.signature(scheduler.set_timesteps).parameters:
        raise ValueError(
            f"{name} takes no custom sigmas (set_timesteps has no `sigmas`); plans with a schedule "
            "of their own (stage 2) need a scheduler that does, e.g. FlowMatchEuler or UniPC"
        )
    kwargs = {"mu": 1.0} if scheduler.config.get("use_dynamic_shifting") else {}
    scheduler.set_timesteps(sigmas=list(sigmas[:-1]), **kwargs)
    moved = SchedulerSolver(scheduler)
    if len(moved.sigmas) != len(sigmas) or max(abs(a - b) for a, b in zip(moved.sigmas, sigmas)) > 1e-5:
        raise ValueError(
            f"{name} changes the sigmas it is given (it shifts or clips them); a plan's own schedule "
            "cannot reach it unchanged"
        )
    return moved
