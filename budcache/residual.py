"""Block-stack residual caching through ``diffusers.hooks``, per transformer instance.

A *head* hook on the first transformer block and a *tail* hook on the last one (the layout of
diffusers' MagCache / FirstBlockCache) bracket the whole block stack. On a computed step the
stack runs and the tail stores ``residual = stack_out - stack_in`` (image stream). On a reused
step the head returns ``stack_in + residual`` and every later block passes its inputs through,
so the input embedding and the timestep-modulated output head still run at the current x and
sigma while the blocks are skipped. Which step computes is decided by the caller (a mask), not
by a threshold. Block return layouts come from diffusers' ``TransformerBlockRegistry``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks._common import _ALL_TRANSFORMER_BLOCK_IDENTIFIERS
from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry

_HEAD = "budcache_stack_head"
_BLOCK = "budcache_stack_block"


@dataclass
class StackState:
    """What the hooks of one block stack share. ``mode`` is ``compute`` or ``reuse``."""

    mode: str = "compute"
    residual: torch.Tensor | None = None
    head_input: torch.Tensor | None = None
    executions: int = 0

    def reset(self) -> None:
        self.mode, self.residual, self.head_input = "compute", None, None


def _pack(meta: TransformerBlockMetadata, hidden: torch.Tensor, args: tuple, kwargs: dict):
    """Build a block's return value, in its registered layout, with ``hidden`` as image stream."""
    if meta.return_encoder_hidden_states_index is None:
        return hidden
    enc = meta._get_parameter_from_args_kwargs(meta.encoder_hidden_states_argument_name, args, kwargs)
    out = [None] * (max(meta.return_hidden_states_index, meta.return_encoder_hidden_states_index) + 1)
    out[meta.return_hidden_states_index] = hidden
    out[meta.return_encoder_hidden_states_index] = enc
    return tuple(out)


class _StackHook(ModelHook):
    """Hook on a block of the stack; the head opens the stack, the tail closes it."""

    def __init__(self, state: StackState, meta: TransformerBlockMetadata, head: bool, tail: bool):
        super().__init__()
        self.state, self.meta, self.head, self.tail = state, meta, head, tail

    def _hidden(self, args: tuple, kwargs: dict) -> torch.Tensor:
        return self.meta._get_parameter_from_args_kwargs(self.meta.hidden_states_argument_name, args, kwargs)

    @torch.compiler.disable
    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        state = self.state
        hidden = self._hidden(args, kwargs)
        if state.mode == "reuse":
            if self.head:
                if state.residual is None or state.residual.shape != hidden.shape:
                    raise RuntimeError(
                        "budcache: no cached residual of matching shape for a reused step "
                        f"(cached {None if state.residual is None else tuple(state.residual.shape)}, "
                        f"input {tuple(hidden.shape)}); the first step must compute"
                    )
                hidden = hidden + state.residual.to(hidden.device, hidden.dtype)
            return _pack(self.meta, hidden, args, kwargs)
        if self.head:
            state.head_input = hidden
            state.executions += 1
        output = self.fn_ref.original_forward(*args, **kwargs)
        if self.tail:
            out = output if not isinstance(output, tuple) else output[self.meta.return_hidden_states_index]
            state.residual = out - state.head_input
            state.head_input = None
        return output

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.state.reset()
        return module


def transformer_blocks(transformer: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The block stack in execution order (e.g. Flux: double blocks, then single blocks)."""
    blocks = []
    for name, child in transformer.named_children():
        if name in _ALL_TRANSFORMER_BLOCK_IDENTIFIERS and isinstance(child, torch.nn.ModuleList):
            blocks += [(f"{name}.{i}", block) for i, block in enumerate(child)]
    return blocks


# Our rows beside diffusers' registry: classes it lacks or describes wrongly (by class name).
OWN_BLOCKS: dict[str, TransformerBlockMetadata] = {
    # diffusers 0.42 registers it with hidden_states_argument_name="hidden_states"; its forward takes `x`
    "ZImageTransformerBlock": TransformerBlockMetadata(return_hidden_states_index=0, hidden_states_argument_name="x"),
}


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


def install(transformer: torch.nn.Module) -> StackState:
    """Install the stack hooks on ``transformer`` (per instance) and return their shared state."""
    blocks = transformer_blocks(transformer)
    if not blocks:
        raise ValueError(
            f"{type(transformer).__name__} has no transformer block list "
            f"({', '.join(sorted(_ALL_TRANSFORMER_BLOCK_IDENTIFIERS))}); use reuse='output'"
        )
    metas = [block_metadata(block) for _, block in blocks]
    if HookRegistry.check_if_exists_or_initialize(blocks[0][1]).get_hook(_HEAD) is not None:
        raise RuntimeError(f"budcache residual hooks are already installed on this {type(transformer).__name__}")
    state = StackState()
    last = len(blocks) - 1
    for i, ((_, block), meta) in enumerate(zip(blocks, metas)):
        hook = _StackHook(state, meta, head=i == 0, tail=i == last)
        HookRegistry.check_if_exists_or_initialize(block).register_hook(hook, _HEAD if i == 0 else _BLOCK)
    return state


def uninstall(transformer: torch.nn.Module) -> None:
    for i, (_, block) in enumerate(transformer_blocks(transformer)):
        registry = getattr(block, "_diffusers_hook", None)
        if registry is not None and registry.get_hook(_HEAD if i == 0 else _BLOCK) is not None:
            registry.remove_hook(_HEAD if i == 0 else _BLOCK, recurse=False)


@contextmanager
def stack_hooks(transformer: torch.nn.Module) -> Iterator[StackState]:
    """Residual hooks for the duration of a ``with`` block; removed even if it raises."""
    state = install(transformer)
    try:
        yield state
    finally:
        uninstall(transformer)
