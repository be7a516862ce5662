"""Drive the residual hooks from a diffusers pipeline's ``callback_on_step_end``."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .plan import CachePlan
from .residual import StackState
from .sampler import history_depth, predict


def plan_callback(plan: CachePlan, stack: StackState) -> Callable:
    """A ``callback_on_step_end`` that makes step i+1 compute or reuse as ``plan`` says.

    After a computed step it records ``(sigma, residual)``; before a reused step it sets the
    residual predicted by the plan's rule at that step's sigma (the scheduler's ``sigmas``).
    The state is cleared after the last step, so the next call starts fresh.
    """
    rules, depth = plan.step_rules, history_depth(plan.step_rules)
    history: list[tuple[float, torch.Tensor]] = []

    def on_step_end(pipe, i: int, t, kwargs: dict) -> dict:
        sigmas = pipe.scheduler.sigmas
        if i == 0:
            history.clear()
            plan.check_steps(len(pipe.scheduler.timesteps))
        if plan.mask[i]:
            history.append((float(sigmas[i]), stack.residual))
            del history[:-depth]
        k = i + 1
        if k >= plan.num_steps:
            history.clear()
            stack.reset()
        elif plan.mask[k]:
            stack.mode = "compute"
        else:
            stack.mode, stack.residual = "reuse", predict(history, float(sigmas[k]), rules[k])
        return {}

    return on_step_end
