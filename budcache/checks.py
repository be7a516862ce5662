"""Checks of a public call's arguments, run before any work: each mistake is one line that names the argument,
what was given and what is allowed (see :mod:`budcache.errors`)."""

from __future__ import annotations

import inspect
from collections.abc import Collection
from typing import Any

import torch

from .errors import ArgumentTypeError, BudcacheError


def _given(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"a {type(value).__name__}"


def check_int(
    name: str, value: Any, low: int, high: int | None = None, error: type[BudcacheError] = BudcacheError
) -> int:
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
