"""Per-instance method overrides (never a patched class)."""

from __future__ import annotations

import functools
import types
from collections.abc import Callable
from typing import Any


class Override:
    """A method override on one instance (``obj.name = fn``) that a deep copy of the instance does
    not inherit: the copy gets the class's own method (LTX-2 deep-copies its scheduler)."""

    def __init__(self, owner: Any, name: str, fn: Callable):
        self.owner, self.name, self.fn = owner, name, fn
        functools.update_wrapper(self, fn)

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def __deepcopy__(self, memo: dict):
        return types.MethodType(getattr(type(self.owner), self.name), memo.get(id(self.owner), self.owner))


def override(obj: Any, name: str, fn: Callable) -> None:
    """Replace ``obj.name`` by ``fn`` on this instance only; undo with :func:`restore`."""
    setattr(obj, name, Override(obj, name, fn))


def restore(obj: Any, *names: str) -> None:
    """Remove this instance's overrides of ``names`` (the class's methods show through again)."""
    for name in names:
        vars(obj).pop(name, None)
