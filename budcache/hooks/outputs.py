"""A transformer call's output as one cache tensor and back (output reuse).

Outputs come as a tensor, a tuple (``return_dict=False``), a diffusers ``BaseOutput``, or nest them: Z-Image
returns a list of per-sample tensors, LTX-2 a video and an audio output. :func:`template` keeps the structure
of a computed output without its tensors, :func:`pack` its tensors as one tensor (the single tensor itself where
there is one, else every tensor flattened and concatenated), :func:`unpack` builds the same structure around a
cached tensor."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.utils import BaseOutput


@dataclass(frozen=True)
class Slot:
    """Where a tensor was: its shape and dtype."""

    shape: torch.Size
    dtype: torch.dtype


def _map(value: Any, leaf: Callable[[Any], Any], is_leaf: Callable[[Any], bool]) -> Any:
    """``value`` with ``leaf`` applied to its leaves, in order, through tuples, lists and ``BaseOutput``."""
    if is_leaf(value):
        return leaf(value)
    if isinstance(value, BaseOutput):
        return type(value)(**{k: _map(v, leaf, is_leaf) for k, v in value.items()})
    if isinstance(value, (tuple, list)):
        return type(value)(_map(v, leaf, is_leaf) for v in value)
    return value


def template(value: Any) -> Any:
    """The output with each tensor replaced by its :class:`Slot` (other values kept)."""
    return _map(value, lambda t: Slot(t.shape, t.dtype), torch.is_tensor)


def pack(value: Any) -> torch.Tensor:
    """The output's tensors as one new tensor."""
    tensors: list[torch.Tensor] = []
    _map(value, tensors.append, torch.is_tensor)
    if len(tensors) == 1:
        return tensors[0].clone()  # a copy: a compiled model's output may live in memory its next call reuses
    return torch.cat([t.reshape(-1).to(tensors[0].dtype) for t in tensors])


def unpack(structure: Any, cached: torch.Tensor) -> Any:
    """``structure`` (a :func:`template`) with its slots filled from ``cached`` (a :func:`pack`)."""
    slots: list[Slot] = []
    _map(structure, slots.append, lambda v: isinstance(v, Slot))
    if len(slots) == 1:
        parts = iter([cached])
    else:
        pieces = torch.split(cached, [s.shape.numel() for s in slots])
        parts = iter(p.reshape(s.shape).to(s.dtype) for p, s in zip(pieces, slots))
    return _map(structure, lambda _: next(parts), lambda v: isinstance(v, Slot))
