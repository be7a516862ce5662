"""Checks of a public call's arguments, run before any work: each mistake is one line that names the argument,
what was given and what is allowed (see :mod:`budcache.errors`)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Collection
from typing import Any

import torch

from .errors import ArgumentTypeError, BudcacheError, CacheConflictError


def _given(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"a {type(value).__name__}"


def check_int(name: str, value: Any, low: int, high: int | None = None, error: type[BudcacheError] = BudcacheError) -> int:
    """``value`` is an int (not a bool) in ``low..high``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArgumentTypeError(f"{name} must be an integer, got {_given(value)}")
    if value < low or (high is not None and value > high):
        allowed = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise error(f"{name} must be {allowed}, got {value}")
    return value


def check_choice(name: str, value: Any, allowed: Collection[str], error: type[BudcacheError] = BudcacheError) -> str:
    """``value`` is one of ``allowed``."""
    if value not in allowed:
        raise error(f"{name} must be one of {', '.join(map(repr, allowed))}, got {_given(value)}")
    return value


def check_type(name: str, value: Any, cls: type | tuple[type, ...], what: str) -> Any:
    """``value`` is an instance of ``cls`` (``what`` says it in words)."""
    if not isinstance(value, cls):
        raise ArgumentTypeError(f"{name} must be {what}, got {_given(value)}")
    return value


def check_pipeline(pipe: Any, name: str = "pipe", transformer_alone: bool = False) -> None:
    """``pipe`` is a diffusers pipeline with a ``transformer`` module (or, where ``transformer_alone``, that module)."""
    if transformer_alone and isinstance(pipe, torch.nn.Module):
        return
    if not isinstance(getattr(pipe, "transformer", None), torch.nn.Module):
        what = "a diffusers pipeline with a `transformer`" + (" or a transformer module" if transformer_alone else "")
        raise ArgumentTypeError(f"{name} must be {what}, got {_given(pipe)}")


def check_call_arguments(pipe: Any, name: str, arguments: Collection[str]) -> None:
    """Every argument is one the pipeline's ``__call__`` takes (unless it takes ``**kwargs``)."""
    parameters = inspect.signature(pipe.__call__).parameters
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return
    unknown = [a for a in arguments if a not in parameters]
    if unknown:
        raise ArgumentTypeError(f"{name}: {type(pipe).__name__} takes no argument {unknown[0]!r}")


def _foreign_forward(model: torch.nn.Module) -> bool:
    """The instance's forward was replaced by something other than the class's own forward, diffusers' hook
    registry or accelerate's hooks (offloading, device maps)."""
    forward = vars(model).get("forward")
    if forward is None or getattr(forward, "__func__", None) is type(model).forward:
        return False
    func = forward.func if isinstance(forward, functools.partial) else forward
    return not getattr(func, "__module__", "").startswith(("diffusers.hooks", "accelerate."))


_PEER_HOOKS = ("fbc_", "mag_cache", "faster_cache", "pyramid_attention_broadcast", "sea_cache", "taylorseer_cache")


def check_no_other_cache(pipe: Any, modules: dict[str, torch.nn.Module]) -> None:
    """No other cache decides which blocks run: a budcache plan, diffusers' cache hooks, cache-dit, or a forward
    replaced on the instance (accelerate's and diffusers' hooks, offloading among them, replace it too: not caches)."""
    if getattr(pipe, "_is_cached", False) or getattr(pipe, "_context_manager", None) is not None:
        raise CacheConflictError("pipe: cache-dit's cache is enabled on this pipeline; call "
                                 "cache_dit.disable_cache(pipe) before budcache.apply")
    for key, module in modules.items():
        model = getattr(module, "_orig_mod", module)
        if getattr(module, "_budcache_handle", None) is not None:
            raise CacheConflictError(f"pipe.{key}: a budcache plan is already applied; call budcache.remove(pipe) "
                                     "(or handle.remove()) first")
        if getattr(model, "is_cache_enabled", False):
            raise CacheConflictError(f"pipe.{key}: diffusers' cache ({type(model._cache_config).__name__}) is enabled; "
                                     f"call pipe.{key}.disable_cache() before budcache.apply")
        if getattr(model, "_is_cached", False):
            raise CacheConflictError(f"pipe.{key}: cache-dit's cache is enabled on this transformer; call "
                                     f"cache_dit.disable_cache(pipe.{key}) before budcache.apply")
        peer = next((name for sub in model.modules() for name in getattr(getattr(sub, "_diffusers_hook", None), "hooks", {})
                     if name.startswith(_PEER_HOOKS)), None)
        if peer is not None:
            raise CacheConflictError(f"pipe.{key}: diffusers' cache hook {peer!r} is registered; remove it (its "
                                     "HookRegistry.remove_hook) before budcache.apply")
        if _foreign_forward(model):
            raise CacheConflictError(f"pipe.{key}.forward was replaced on the instance (cache-dit or another patcher "
                                     "decides what runs); restore the class's forward before budcache.apply")
