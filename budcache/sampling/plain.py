"""Plain fewer-step solvers at the same NFE: the baselines a plan must beat.

``adams_bashforth2`` is a two-step explicit multistep method in sigma (k-diffusion style); the
diffusers schedulers run their own loop over their default flow-matching schedule.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

from .denoisers import OutputDenoiser, VelocityFn
from .loop import euler, linear_sigmas, sample
from .solver import AB2, SchedulerSolver

FLOW = dict(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=1.0)
SCHEDULERS: dict[str, Callable[[], object]] = {
    "FlowMatchEuler": lambda: FlowMatchEulerDiscreteScheduler(shift=1.0),
    "UniPC (flow)": lambda: UniPCMultistepScheduler(**FLOW),
    "DPM-Solver++ 2M (flow)": lambda: DPMSolverMultistepScheduler(**FLOW),
}


def adams_bashforth2(fn: VelocityFn, x: torch.Tensor, sigmas: Sequence[float]) -> torch.Tensor:
    """Plain AB2 over ``sigmas`` (see :class:`~.solver.AB2`): the one loop, every step computed."""
    return sample(OutputDenoiser(fn), x, AB2(sigmas), [1] * (len(sigmas) - 1), check_finite=False)


def scheduler_sample(scheduler, fn: VelocityFn, x: torch.Tensor, num_steps: int) -> torch.Tensor:
    """Run a diffusers flow-matching scheduler for ``num_steps`` model calls on its default schedule
    (the one loop, stepping with the scheduler's own ``step``)."""
    scheduler.set_timesteps(num_steps)
    return sample(OutputDenoiser(fn), x, SchedulerSolver(scheduler), [1] * num_steps, check_finite=False)


def plain_solvers(fn: VelocityFn, x: torch.Tensor, nfe: int) -> dict[str, torch.Tensor]:
    """Every plain solver at ``nfe`` model calls: Euler and AB2 on linear sigmas, and the schedulers."""
    out = {
        f"plain {nfe}-step Euler": euler(fn, x, linear_sigmas(nfe)),
        f"plain {nfe}-step AB2": adams_bashforth2(fn, x, linear_sigmas(nfe)),
    }
    for name, make in SCHEDULERS.items():
        out[f"{name} {nfe}"] = scheduler_sample(make(), fn, x, nfe)
    return out
