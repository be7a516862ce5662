"""``budcache.apply(pipe, plan)``: run a plan inside a diffusers pipeline, per instance.

A stateful ``ModelHook`` on the transformer counts denoising steps per cache context (``cond`` /
``uncond`` under CFG, each with its own cache), decides compute or reuse from the plan's mask,
and feeds the block-stack hooks (``residual``) or returns the cached output (``output``). The step
index comes from the pipeline's scheduler (``step_index``, so a new or interrupted generation
restarts at step 0); a transformer used without a scheduler counts its calls, restarting on a
timestep larger than the last one. Another batch size also restarts, so stale cache is never
reused. A plan with
``sigmas`` sets the scheduler's schedule exactly (shift and ``mu`` bypassed).
"""

from __future__ import annotations

from typing import Any

import functools
import inspect

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, CacheContext, StateManager

from . import residual
from .plan import CachePlan
from .sampler import history_depth, predict

_HOOK = "budcache_plan"


@functools.lru_cache(maxsize=None)
def _signature(cls: type) -> inspect.Signature:
    return inspect.signature(cls.forward)


class _Branch(BaseState):
    """Progress of one cache context through a generation."""

    def __init__(self) -> None:
        super().__init__()
        self.reset()

    def reset(self) -> None:
        self.step, self.last_t, self.batch, self.direction = 0, None, None, 0.0
        self.history: list[tuple[float, torch.Tensor]] = []
        self.computed = self.reused = 0


def _current_sigma(scheduler: Any) -> float:
    """The sigma of the step the scheduler is about to take (before its first ``step`` call too)."""
    index = scheduler.step_index
    if index is None:
        index = getattr(scheduler, "begin_index", None) or 0
    return float(scheduler.sigmas[index])


class _PlanHook(ModelHook):
    _is_stateful = True

    def __init__(self, plan: CachePlan, stack: residual.StackState | None, scheduler: Any):
        super().__init__()
        self.plan, self.stack, self.scheduler = plan, stack, scheduler
        self.rules, self.depth = plan.step_rules, history_depth(plan.step_rules)
        self.branches = StateManager(_Branch)
        self.container: type = tuple
        self.finished: dict[str, dict[str, int]] = {}

    def _inputs(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[float, int]:
        """The call's timestep (``timestep`` or ``t``) and batch size."""
        bound = _signature(type(module)).bind_partial(module, *args, **kwargs).arguments
        t = bound.get("timestep", bound.get("t"))
        if t is None:
            raise ValueError(f"budcache: cannot find the timestep argument of {type(module).__name__}.forward")
        hidden = next(v for k, v in bound.items() if k != "self")
        return float(torch.as_tensor(t).flatten()[0]), hidden.shape[0] if torch.is_tensor(hidden) else len(hidden)

    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        if self.branches._context is None:
            self.branches.set_context(CacheContext("default"))
        name, state = self.branches._context.name, self.branches.get_state()
        t, batch = self._inputs(module, args, kwargs)
        if hasattr(self.scheduler, "step_index"):  # inside a pipeline: step 0 starts a generation
            new = not self.scheduler.step_index
        else:  # a bare transformer: a timestep that repeats or turns back starts a generation
            d = t - state.last_t if state.step else 0.0
            new = bool(state.step) and (d == 0 or d * state.direction < 0)
        if new or batch != state.batch:
            state.reset()  # also after an interrupted generation
        k = state.step
        if k == 0 and self.scheduler is not None and hasattr(self.scheduler, "timesteps"):
            self.plan.check_steps(len(self.scheduler.timesteps))
        if hasattr(self.scheduler, "step_index") and hasattr(self.scheduler, "sigmas"):
            t = _current_sigma(self.scheduler)  # rules extrapolate in sigma, as the search does
        compute = bool(self.plan.mask[k])
        try:
            if self.stack is None:  # output reuse: the whole transformer call is skipped
                if compute:
                    out = self.fn_ref.original_forward(*args, **kwargs)
                    self.container = type(out)
                    sample = out[0] if isinstance(out, tuple) else out.sample
                    state.history = (state.history + [(t, sample)])[-self.depth:]
                else:
                    cached = predict(state.history, t, self.rules[k])
                    out = (cached,) if issubclass(self.container, tuple) else self.container(sample=cached)
            else:
                if not compute:
                    self.stack.mode, self.stack.residual = "reuse", predict(state.history, t, self.rules[k])
                out = self.fn_ref.original_forward(*args, **kwargs)
                if compute:
                    state.history = (state.history + [(t, self.stack.residual)])[-self.depth:]
        except BaseException:
            state.reset()
            raise
        finally:
            if self.stack is not None:
                self.stack.reset()
        state.computed += compute
        state.reused += not compute
        if k == 1:
            state.direction = t - state.last_t
        state.step, state.last_t, state.batch = k + 1, t, batch
        if state.step == self.plan.num_steps:
            self.finished[name] = {"computed": state.computed, "reused": state.reused}
            state.reset()
        return out

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.branches.reset()
        return module


class CacheHandle:
    """What :func:`apply` installed; ``remove()`` restores the pipeline exactly."""

    def __init__(self, transformer: torch.nn.Module, hook: _PlanHook, scheduler: Any, plan: CachePlan):
        self.transformer, self.hook, self.scheduler, self.plan = transformer, hook, scheduler, plan

    def summary(self) -> dict[str, dict[str, int]]:
        """Computed and reused steps of the last finished generation, per CFG branch."""
        return dict(self.hook.finished)

    def remove(self) -> None:
        registry = getattr(self.transformer, "_diffusers_hook", None)
        if registry is not None and registry.get_hook(_HOOK) is not None:
            registry.remove_hook(_HOOK, recurse=False)
        if self.hook.stack is not None:
            residual.uninstall(self.transformer)
        if self.scheduler is not None and "set_timesteps" in vars(self.scheduler):
            del self.scheduler.set_timesteps

    def __enter__(self) -> CacheHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def summary(pipe: Any) -> dict[str, dict[str, int]]:
    """Computed and reused steps per CFG branch of the last generation of ``pipe`` (with a plan applied)."""
    transformer = getattr(pipe, "transformer", pipe)
    registry = getattr(transformer, "_diffusers_hook", None)
    hook = registry.get_hook(_HOOK) if registry is not None else None
    if hook is None:
        raise ValueError("no budcache plan is applied to this pipeline; call budcache.apply(pipe, plan) first")
    return dict(hook.finished)


def _pin_sigmas(scheduler: Any, plan: CachePlan) -> None:
    """Make ``scheduler.set_timesteps`` (this instance only) produce exactly ``plan_sigmas``; the
    pipeline's own ``sigmas`` / ``timesteps`` / step count are ignored (the plan fixes them)."""
    original, plan_sigmas = scheduler.set_timesteps, plan.sigmas
    train = scheduler.config.get("num_train_timesteps", 1000)

    def set_timesteps(num_inference_steps=None, device=None, sigmas=None, mu=None, timesteps=None, **kwargs):
        asked = next((len(v) for v in (sigmas, timesteps) if v is not None), num_inference_steps)
        if asked is not None:
            plan.check_steps(int(asked))
        original(len(plan_sigmas) - 1, device=device, **({} if mu is None else {"mu": mu}))
        scheduler.sigmas = torch.tensor(plan_sigmas, dtype=torch.float32, device=device)
        scheduler.timesteps = scheduler.sigmas[:-1] * train

    scheduler.set_timesteps = set_timesteps


def apply(pipe: Any, plan: CachePlan) -> CacheHandle:
    """Install ``plan`` on ``pipe.transformer`` (or on a transformer passed directly)."""
    transformer = getattr(pipe, "transformer", pipe)
    scheduler = getattr(pipe, "scheduler", None)
    plan.check_model(transformer)
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    if registry.get_hook(_HOOK) is not None:
        raise RuntimeError("a budcache plan is already applied to this transformer; remove() it first")
    stack = residual.install(transformer) if residual.reuse_for(transformer, plan.reuse) == "residual" else None
    hook = _PlanHook(plan, stack, scheduler)
    registry.register_hook(hook, _HOOK)
    if plan.sigmas is not None and scheduler is not None:
        _pin_sigmas(scheduler, plan)
    return CacheHandle(transformer, hook, scheduler, plan)
