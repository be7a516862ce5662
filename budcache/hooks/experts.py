"""What the hooks need to know about a pipeline's transformers: which ones there are, how their
``forward`` names the latent and the timestep, the pipeline's cache context, the scheduler's step."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, cast

import torch
from diffusers.hooks.hooks import BaseState, ModelHook, StateManager

from ..families import expert_names


def original_forward(hook: ModelHook) -> Callable[..., Any]:
    """The forward a registered hook wraps (diffusers types ``fn_ref.original_forward`` as its initial None)."""
    return cast(Callable[..., Any], hook.fn_ref.original_forward)


def experts(pipe: Any) -> dict[str, torch.nn.Module]:
    """The transformers of a pipeline by attribute name (``transformer``, Wan2.2's ``transformer_2``)."""
    return {name: getattr(pipe, name) for name in expert_names(pipe) if getattr(pipe, name, None) is not None}


@functools.cache
def parameters(cls: type) -> tuple[str, ...]:
    """The parameter names of ``cls.forward`` (``self`` included)."""
    return tuple(inspect.signature(cls.forward).parameters)


@functools.cache
def input_positions(cls: type) -> tuple[str, str, int]:
    """(latent argument name, timestep argument name, the timestep's positional index) of ``cls.forward``."""
    params = parameters(cls)[1:]
    timestep = next((p for p in ("timestep", "t") if p in params), None)
    if timestep is None:
        raise ValueError(f"budcache: {cls.__name__}.forward has no `timestep` (or `t`) argument")
    return params[0], timestep, params.index(timestep)


def input_names(module: torch.nn.Module) -> tuple[str, str]:
    """Names of the latent input and the timestep in ``module.forward``."""
    return input_positions(type(module))[:2]


class ContextName(BaseState):
    """Stateless: a hook holds a ``StateManager`` of it only to learn the pipeline's cache context."""

    def reset(self) -> None:
        pass


def contexts() -> StateManager:
    """A state manager that diffusers' ``cache_context`` sets on every hook of a registry."""
    return StateManager(ContextName)


def context_name(manager: StateManager) -> str | None:
    """The pipeline's current cache context (``cond`` / ``uncond``), or None outside one."""
    try:
        return manager.context.name
    except ValueError:
        return None


def step_index(scheduler: Any) -> int:
    """The step the scheduler is about to take (also before its first ``step`` call)."""
    index = scheduler.step_index
    return index if index is not None else (getattr(scheduler, "begin_index", None) or 0)
