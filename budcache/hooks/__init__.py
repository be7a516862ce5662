"""Per-instance hooks: the block-stack residual hooks and the plan hook that applies a plan."""

from .plan_hook import CacheHandle, apply, remove, summary
from .stack import StackState, install, reuse_for, stack_hooks, uninstall

__all__ = [
    "CacheHandle",
    "apply",
    "remove",
    "summary",
    "StackState",
    "install",
    "reuse_for",
    "stack_hooks",
    "uninstall",
]
