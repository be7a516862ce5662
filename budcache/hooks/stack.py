"""Block-stack residual caching through ``diffusers.hooks``, per transformer instance.

Each block list of a transformer (FLUX: double blocks, then single blocks) is a *segment*: a
head hook on its first block and a tail hook on its last (the layout of diffusers' MagCache /
FirstBlockCache). On a computed step every segment runs and its tail stores the residual
``out - in`` of each stream its blocks return (image, and text or audio where they return it).
On a reused step each head returns ``in + residual`` and every later block of the segment
passes its inputs through, so the input embedding, whatever the transformer does between
segments and the timestep-modulated output head still run at the current x and sigma while
all blocks are skipped. The residuals of one call travel as one tensor ``(batch, n)``, so a
reuse rule can extrapolate them. Which step computes is decided by the caller (a mask), never
by a threshold. Block return layouts come from diffusers' ``TransformerBlockRegistry``, or from
the ``blocks`` rows of :mod:`budcache.families` for classes it lacks or describes wrongly.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks._common import _ALL_TRANSFORMER_BLOCK_IDENTIFIERS
from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry

from ..families import OWN_BLOCKS

_HEAD = "budcache_stack_head"
_BLOCK = "budcache_stack_block"


@dataclass
class StackState:
    """What the hooks of one transformer share. ``mode`` is ``compute`` or ``reuse``; ``residual``
    holds every segment's stream residuals of the last computed call, flattened per sample."""

    mode: str = "compute"
    residual: torch.Tensor | None = None
    executions: int = 0
    inputs: list = field(default_factory=list)  # head inputs of the open segment (compute)
    parts: list = field(default_factory=list)  # residual pieces so far (compute)
    offset: int = 0  # columns of ``residual`` consumed so far (reuse)
    shapes: dict[int, list] = field(default_factory=dict)  # per segment: each stream's residual shape, or None

    def reset(self) -> None:
        self.mode, self.residual, self.inputs, self.parts, self.offset = "compute", None, [], [], 0

    @contextmanager
    def step(self, residual: torch.Tensor | None = None) -> Iterator[StackState]:
        """One transformer call: computing (``residual`` None; read ``.residual`` before leaving), or
        reusing ``residual``; the state is reset afterwards, also when the call raises."""
        self.mode, self.residual = ("compute", None) if residual is None else ("reuse", residual)
        try:
            yield self
        finally:
            self.reset()

    def add(self, stream: torch.Tensor, shape: torch.Size | None) -> torch.Tensor:
        """``stream`` plus its next residual piece of ``shape`` (reuse); None: passes through."""
        if shape is None:
            return stream
        n = shape[1:].numel()
        if self.residual is not None:  # the stream layout is structural; the batch is the cached one's
            shape = torch.Size((self.residual.shape[0], *shape[1:]))
        if self.residual is None or self.offset + n > self.residual.shape[1] \
                or torch.broadcast_shapes(stream.shape, shape) != shape:
            raise RuntimeError(
                "budcache: no cached residual matching this step's block inputs "
                f"(cached {None if self.residual is None else tuple(self.residual.shape)}, stream {tuple(stream.shape)}); "
                "the step must compute: the first step, and every step where the transformer's inputs change shape"
            )
        piece = self.residual[:, self.offset : self.offset + n]
        self.offset += n
        return stream + piece.reshape(shape).to(stream.device, stream.dtype)


def _streams(meta: TransformerBlockMetadata, args: tuple, kwargs: dict, output=None) -> list:
    """The streams a block returns: from its output, or (``output`` None) from its inputs."""
    enc = meta.return_encoder_hidden_states_index
    if output is not None:
        if not isinstance(output, tuple):
            return [output]
        return [output[meta.return_hidden_states_index]] + ([] if enc is None else [output[enc]])
    hidden = meta._get_parameter_from_args_kwargs(meta.hidden_states_argument_name, args, kwargs)
    if enc is None:
        return [hidden]
    return [hidden, meta._get_parameter_from_args_kwargs(meta.encoder_hidden_states_argument_name, args, kwargs)]


def _pack(meta: TransformerBlockMetadata, streams: list):
    """A block's return value, in its registered layout."""
    if meta.return_encoder_hidden_states_index is None:
        return streams[0]
    out = [None] * (max(meta.return_hidden_states_index, meta.return_encoder_hidden_states_index) + 1)
    out[meta.return_hidden_states_index] = streams[0]
    out[meta.return_encoder_hidden_states_index] = streams[1]
    return tuple(out)


class _StackHook(ModelHook):
    """Hook on a block of a segment; the head opens the segment, the tail closes it."""

    def __init__(self, state: StackState, meta: TransformerBlockMetadata, segment: int, head: bool, tail: bool,
                 first: bool, last: bool):
        super().__init__()
        self.state, self.meta, self.segment, self.head, self.tail = state, meta, segment, head, tail
        self.first, self.last = first, last  # head of the first segment, tail of the last

    @torch.compiler.disable
    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        state = self.state
        if state.mode == "reuse":
            streams = _streams(self.meta, args, kwargs)
            if self.head:
                streams = [state.add(s, shape) for s, shape in zip(streams, state.shapes[self.segment])]
            return _pack(self.meta, streams)
        if self.head:
            state.inputs = _streams(self.meta, args, kwargs)
            state.executions += self.first
        output = self.fn_ref.original_forward(*args, **kwargs)
        if self.tail:
            outs = _streams(self.meta, args, kwargs, output)
            # a second stream may be dropped (SD3's last block) or broadcast (FLUX text under batch > 1):
            # then it is not cached and passes through on reuse
            kept = [torch.is_tensor(o) and torch.is_tensor(i) and o.shape == i.shape for o, i in zip(outs, state.inputs)]
            if not kept[0]:
                raise RuntimeError(f"budcache: a block list of {type(module).__name__} changes the shape of its "
                                   "streams; it cannot be cached as a residual, use reuse='output'")
            state.shapes[self.segment] = [o.shape if k else None for k, o in zip(kept, outs)]
            state.parts += [(o - i).flatten(1) for k, o, i in zip(kept, outs, state.inputs) if k]
            state.inputs = []
            if self.last:
                state.residual, state.parts = torch.cat(state.parts, dim=1), []
        return output

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.state.reset()
        return module


def block_lists(transformer: torch.nn.Module) -> list[list[torch.nn.Module]]:
    """The transformer's block lists (segments) in execution order, by diffusers' block-list names."""
    return [list(child) for name, child in transformer.named_children()
            if name in _ALL_TRANSFORMER_BLOCK_IDENTIFIERS and isinstance(child, torch.nn.ModuleList) and len(child)]


def transformer_blocks(transformer: torch.nn.Module) -> list[torch.nn.Module]:
    """Every block of every segment, in execution order."""
    return [block for blocks in block_lists(transformer) for block in blocks]


def block_metadata(block: torch.nn.Module) -> TransformerBlockMetadata:
    own = OWN_BLOCKS.get(type(block).__name__)
    if own is not None:
        own._cls = type(block)
        return own
    try:
        return TransformerBlockRegistry.get(type(block))
    except ValueError:
        raise ValueError(
            f"budcache does not know the return layout of {type(block).__name__}, so it cannot "
            "skip its block stack; use reuse='output' for this model"
        ) from None


def has_known_blocks(transformer: torch.nn.Module) -> bool:
    """Whether budcache can skip this transformer's block stack (else: ``output`` reuse)."""
    try:
        return bool(block_lists(transformer)) and all(block_metadata(b) for b in transformer_blocks(transformer))
    except ValueError:
        return False


def reuse_for(model: torch.nn.Module, reuse: str) -> str:
    """``reuse``, or ``output`` with a one-line warning when the model's blocks are unknown."""
    if reuse == "residual" and not has_known_blocks(model):
        warnings.warn(f"budcache: no known block list in {type(model).__name__}; falling back to output reuse "
                      "(whole transformer calls are skipped)", stacklevel=3)
        return "output"
    return reuse


def install(transformer: torch.nn.Module) -> StackState:
    """Install the stack hooks on ``transformer`` (per instance) and return their shared state."""
    segments = block_lists(transformer)
    if not segments:
        raise ValueError(
            f"{type(transformer).__name__} has no transformer block list "
            f"({', '.join(sorted(_ALL_TRANSFORMER_BLOCK_IDENTIFIERS))}); use reuse='output'"
        )
    metas = [[block_metadata(block) for block in blocks] for blocks in segments]
    if HookRegistry.check_if_exists_or_initialize(segments[0][0]).get_hook(_HEAD) is not None:
        raise RuntimeError(f"budcache residual hooks are already installed on this {type(transformer).__name__}")
    state = StackState()
    for s, (blocks, block_metas) in enumerate(zip(segments, metas)):
        for i, (block, meta) in enumerate(zip(blocks, block_metas)):
            head, tail = i == 0, i == len(blocks) - 1
            hook = _StackHook(state, meta, s, head, tail, first=head and s == 0, last=tail and s == len(segments) - 1)
            HookRegistry.check_if_exists_or_initialize(block).register_hook(hook, _HEAD if head else _BLOCK)
    return state


def uninstall(transformer: torch.nn.Module) -> None:
    for blocks in block_lists(transformer):
        for i, block in enumerate(blocks):
            name = _HEAD if i == 0 else _BLOCK
            registry = getattr(block, "_diffusers_hook", None)
            if registry is not None and registry.get_hook(name) is not None:
                registry.remove_hook(name, recurse=False)


@contextmanager
def stack_hooks(transformer: torch.nn.Module) -> Iterator[StackState]:
    """Residual hooks for the duration of a ``with`` block; removed even if it raises."""
    state = install(transformer)
    try:
        yield state
    finally:
        uninstall(transformer)
