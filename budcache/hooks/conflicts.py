"""Another cache on a transformer: refused before a plan is applied (budcache decides which blocks run, or
nothing does)."""

from __future__ import annotations

import functools
from typing import Any

import torch

from ..errors import CacheConflictError
from .override import Override


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
        raise CacheConflictError(
            "pipe: cache-dit's cache is enabled on this pipeline; call "
            "cache_dit.disable_cache(pipe) before budcache.apply"
        )
    for key, module in modules.items():
        model = getattr(module, "_orig_mod", module)
        if getattr(module, "_budcache_handle", None) is not None:
            raise CacheConflictError(
                f"pipe.{key}: a budcache plan is already applied; call budcache.remove(pipe) (or handle.remove()) first"
            )
        if getattr(model, "is_cache_enabled", False):
            raise CacheConflictError(
                f"pipe.{key}: diffusers' cache ({type(model._cache_config).__name__}) is enabled; "
                f"call pipe.{key}.disable_cache() before budcache.apply"
            )
        if getattr(model, "_is_cached", False):
            raise CacheConflictError(
                f"pipe.{key}: cache-dit's cache is enabled on this transformer; call "
                f"cache_dit.disable_cache(pipe.{key}) before budcache.apply"
            )
        registry = vars(model).get("_diffusers_hook")
        if registry is not None and registry.get_hook("lazy_prefetch_group_offloading") is not None:
            raise CacheConflictError(
                f"pipe.{key}: group offloading with streams has not run yet, and its first call "
                "re-wires the hooks the plan adds; apply the plan before enable_group_offload("
                "..., use_stream=True), or after one generation"
            )
        peer = next(
            (
                name
                for sub in model.modules()
                for name in getattr(getattr(sub, "_diffusers_hook", None), "hooks", {})
                if name.startswith(_PEER_HOOKS)
            ),
            None,
        )
        if peer is not None:
            raise CacheConflictError(
                f"pipe.{key}: diffusers' cache hook {peer!r} is registered; remove it (its "
                "HookRegistry.remove_hook) before budcache.apply"
            )
        if _foreign_forward(model):
            raise CacheConflictError(
                f"pipe.{key}.forward was replaced on the instance (cache-dit or another patcher "
                "decides what runs); restore the class's forward before budcache.apply"
            )
    if isinstance(vars(getattr(pipe, "scheduler", None) or object).get("set_timesteps"), Override):
        raise CacheConflictError(
            "pipe.scheduler: a budcache plan is still applied to this pipeline's scheduler (its "
            "transformer was replaced since); remove that plan (handle.remove()) first"
        )
