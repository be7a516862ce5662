"""A stage module that is also its verb: ``budcache.search(calib, 8)`` calls ``budcache.search.search``
while ``from budcache.search import Evaluator`` imports from the same module, so the name
``budcache.search`` (and ``budcache.align``) means one thing."""

from __future__ import annotations

import sys
import types
from collections.abc import Callable


def callable_module(name: str, fn: Callable) -> None:
    """Make the module ``name`` callable as ``fn`` (its docstring and signature are ``fn``'s)."""
    module = sys.modules[name]
    module.__class__ = type(f"{fn.__name__}_stage", (types.ModuleType,), {"__call__": staticmethod(fn)})
