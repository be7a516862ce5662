"""Block-stack residual caching, per transformer instance (per-instance block ``forward`` overrides).

Each block list of a transformer (FLUX: double blocks, then single blocks) is a *segment*, opened
by its first block (the head; the layout of diffusers' MagCache / FirstBlockCache). On a computed
step every segment runs, its head keeps its input streams and every block records its output
streams (so the last block's are kept), and the residual ``out - in`` of each stream the blocks
return (image, and text or audio where they return it) is assembled after the call. On a reused
step each head returns ``in + residual`` (split per segment before the call) and every later block
of the segment passes its inputs through, so the input embedding, whatever the transformer does
between segments and the timestep-modulated output head still run at the current x and sigma while
all blocks are skipped. The residuals of one call travel as one tensor ``(batch, n)``, so a
reuse rule can extrapolate them. Which step computes is decided by the caller (a mask), never
by a threshold. Block return layouts come from diffusers' ``TransformerBlockRegistry``, or from
the ``blocks`` rows of :mod:`budcache.families` for classes it lacks or describes wrongly.

The overrides stay traceable by ``torch.compile`` (``fullgraph=True``, blocks compiled regionally or
the whole transformer): inside a block they read only ``mode`` and their segment.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from diffusers.hooks._common import _ALL_TRANSFORMER_BLOCK_IDENTIFIERS
from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry

from ..errors import PlanError, StateError
from ..families import OWN_BLOCKS


@dataclass
class Segment:
    """One block list in one call: its head's input streams and its tail's output streams (a
    computed call), or each stream's cached residual (a reused call; None: the stream passes
    through); ``shapes``: each stream's residual shape (None: not cached) of the last computed call."""

    inputs: list | None = None
    outputs: list | None = None
    pieces: list | None = None
    shapes: list | None = None


@dataclass
class StackState:
    """What the hooks of one transformer share. ``mode`` is ``compute`` or ``reuse``; ``residual``
    holds every segment's stream residuals of the last computed call, flattened per sample.

    What changes from call to call is prepared before the call (the residual, split per segment) and
    assembled after it (the residual of a computed call), outside the blocks: inside them the hooks
    branch only on ``mode`` and on their segment, so that compiled blocks or a compiled transformer
    trace one graph per mode without a graph break."""

    segments: list[Segment] = field(default_factory=list)
    mode: str = "compute"
    executions: int = 0
    blocks: list[torch.nn.Module] = field(default_factory=list)  # the hooked blocks, in execution order
    _residual: torch.Tensor | None = None

    def check(self, transformer: torch.nn.Module) -> None:
        """The hooked blocks are still the transformer's: a wrapper that replaced them after the plan was applied
        would run them unskipped (a block added beside them runs every step, as FirstBlockCache's first block)."""
        if not {id(b) for b in self.blocks} <= {id(b) for b in transformer_blocks(transformer)}:
            raise StateError(
                f"pipe.transformer: its blocks were replaced after budcache.apply (a wrapper took their "
                f"place in {type(transformer).__name__}), so the plan cannot skip them; remove the plan "
                "(budcache.remove(pipe)), apply the wrapper, then budcache.apply(pipe, plan)"
            )

    def reset(self) -> None:
        self.mode, self._residual = "compute", None
        for segment in self.segments:
            segment.inputs = segment.outputs = segment.pieces = None

    @property
    def residual(self) -> torch.Tensor | None:
        """The residual reused (``reuse``) or, after a computed call, the one it produced."""
        if self._residual is None and self.mode == "compute" and self.segments and self.segments[-1].outputs:
            self._residual = self._assemble()
        return self._residual

    @property
    def shapes(self) -> list:
        """Every segment's residual shapes of the last computed call (what a reused residual is split by)."""
        return [segment.shapes for segment in self.segments]

    @contextmanager
    def step(self, residual: torch.Tensor | None = None, shapes: list | None = None) -> Iterator[StackState]:
        """One transformer call: computing (``residual`` None; read ``.residual`` before leaving), or
        reusing ``residual``, split by ``shapes`` (:attr:`shapes` of the call that computed it; default: of the
        last computed call); the state is reset afterwards, also when the call raises."""
        try:
            if shapes is not None:
                for segment, shape in zip(self.segments, shapes):
                    segment.shapes = shape
            if residual is not None:
                self._split(residual)
                self.mode, self._residual = "reuse", residual
            yield self
        finally:
            self.executions += self.mode == "compute" and bool(self.segments) and self.segments[0].inputs is not None
            self.reset()

    def _assemble(self) -> torch.Tensor:
        """The residual ``out - in`` of every stream the segments keep, from a computed call."""
        parts = []
        for segment in self.segments:
            outs, ins = segment.outputs, segment.inputs
            # a second stream may be dropped (SD3's last block) or broadcast (FLUX text under batch > 1):
            # then it is not cached and passes through on reuse
            kept = [torch.is_tensor(o) and torch.is_tensor(i) and o.shape == i.shape for o, i in zip(outs, ins)]
            if not kept[0]:
                raise PlanError(
                    "budcache: a block list of this transformer changes the shape of its streams; "
                    "it cannot be cached as a residual, use reuse='output'"
                )
            segment.shapes = [o.shape if k else None for k, o in zip(kept, outs)]
            parts += [(o - i).flatten(1) for k, o, i in zip(kept, outs, ins) if k]
        return torch.cat(parts, dim=1)

    def _split(self, residual: torch.Tensor) -> None:
        """``residual`` as one piece per segment and stream, in the shapes of the last computed call
        (the batch is the cached one's)."""
        offset = 0
        for segment in self.segments:
            if segment.shapes is None:
                raise _no_residual(residual, None)
            segment.pieces = []
            for shape in segment.shapes:
                n = 0 if shape is None else shape[1:].numel()
                segment.pieces.append(
                    None if shape is None else residual[:, offset : offset + n].reshape(residual.shape[0], *shape[1:])
                )
                offset += n
        if offset > residual.shape[1]:
            raise _no_residual(residual, None)


def _no_residual(residual: torch.Tensor | None, stream: torch.Tensor | None) -> PlanError:
    return PlanError(
        "budcache: no cached residual matching this step's block inputs "
        f"(cached {None if residual is None else tuple(residual.shape)}, "
        f"stream {None if stream is None else tuple(stream.shape)}); "
        "the step must compute: the first step, and every step where the transformer's inputs change shape"
    )


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


def _add(stream: torch.Tensor, piece: torch.Tensor | None) -> torch.Tensor:
    """``stream`` plus its cached residual ``piece`` (None: the stream passes through)."""
    if piece is None:
        return stream
    try:
        shape = torch.broadcast_shapes(stream.shape, piece.shape)
    except RuntimeError:
        shape = None
    if shape != piece.shape:
        raise _no_residual(piece, stream)
    return stream + piece.to(stream.device, stream.dtype)


def _pack(meta: TransformerBlockMetadata, streams: list):
    """A block's return value, in its registered layout."""
    if meta.return_encoder_hidden_states_index is None:
        return streams[0]
    out = [None] * (max(meta.return_hidden_states_index, meta.return_encoder_hidden_states_index) + 1)
    out[meta.return_hidden_states_index] = streams[0]
    out[meta.return_encoder_hidden_states_index] = streams[1]
    return tuple(out)


class _BlockHook:
    """The per-instance ``forward`` of one block of a segment (the head opens it; every block
    records its output streams, so that the tail's are the segment's).

    Not a diffusers ``HookRegistry`` hook: under regional compilation (``compile_repeated_blocks``)
    a block's ``forward`` is the frame torch.compile compiles, and the hooks of a registry all share
    one such frame, hence one recompile limit; the head and the other blocks run distinct code here,
    so each gets its own graphs (one per segment and mode)."""

    def __init__(
        self, state: StackState, meta: TransformerBlockMetadata, segment: Segment, block: torch.nn.Module, head: bool
    ):
        self.state, self.meta, self.segment, self.block = state, meta, segment, block
        self.previous = vars(block).get("forward")  # an instance forward installed before (another hook)
        self.original = block.forward
        self.removed = False
        self.installed = functools.update_wrapper(
            functools.partial(_head_forward if head else _block_forward, self), self.original
        )
        block.forward = self.installed

    def remove(self) -> None:
        """Restore the block's forward; where a feature wrapped it after the plan was applied (group offloading),
        its wrapper stays and this hook passes every call through."""
        self.removed = True
        if vars(self.block).get("forward") is not self.installed:
            return
        if self.previous is None:
            vars(self.block).pop("forward", None)
        else:
            self.block.forward = self.previous


def _head_forward(hook: _BlockHook, *args, **kwargs):
    if hook.removed:
        return hook.original(*args, **kwargs)
    segment = hook.segment
    if hook.state.mode == "reuse":
        if segment.pieces is None:
            raise _no_residual(None, _streams(hook.meta, args, kwargs)[0])
        return _pack(hook.meta, [_add(s, p) for s, p in zip(_streams(hook.meta, args, kwargs), segment.pieces)])
    segment.inputs = _streams(hook.meta, args, kwargs)
    output = hook.original(*args, **kwargs)
    segment.outputs = _streams(hook.meta, args, kwargs, output)
    return output


def _block_forward(hook: _BlockHook, *args, **kwargs):
    if hook.removed:
        return hook.original(*args, **kwargs)
    if hook.state.mode == "reuse":
        return _pack(hook.meta, _streams(hook.meta, args, kwargs))
    output = hook.original(*args, **kwargs)
    hook.segment.outputs = _streams(hook.meta, args, kwargs, output)
    return output


def block_lists(transformer: torch.nn.Module) -> list[list[torch.nn.Module]]:
    """The transformer's block lists (segments) in execution order, by diffusers' block-list names."""
    return [
        list(child)
        for name, child in transformer.named_children()
        if name in _ALL_TRANSFORMER_BLOCK_IDENTIFIERS and isinstance(child, torch.nn.ModuleList) and len(child)
    ]


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
        warnings.warn(
            f"budcache: no known block list in {type(model).__name__}; falling back to output reuse "
            "(whole transformer calls are skipped)",
            stacklevel=3,
        )
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
    if _hooks(transformer):
        raise RuntimeError(f"budcache residual hooks are already installed on this {type(transformer).__name__}")
    state = StackState(segments=[Segment() for _ in segments], blocks=[b for blocks in segments for b in blocks])
    for blocks, block_metas, segment in zip(segments, metas, state.segments):
        for i, (block, meta) in enumerate(zip(blocks, block_metas)):
            block._budcache_stack = _BlockHook(state, meta, segment, block, head=i == 0)
    return state


def _hooks(transformer: torch.nn.Module) -> list[_BlockHook]:
    return [vars(b)["_budcache_stack"] for b in transformer_blocks(transformer) if "_budcache_stack" in vars(b)]


def uninstall(transformer: torch.nn.Module) -> None:
    for hook in reversed(_hooks(transformer)):
        hook.remove()
        del hook.block._budcache_stack


@contextmanager
def stack_hooks(transformer: torch.nn.Module) -> Iterator[StackState]:
    """Residual hooks for the duration of a ``with`` block; removed even if it raises."""
    state = install(transformer)
    try:
        yield state
    finally:
        uninstall(transformer)
