"""Import-time noise of optional backends: on a machine without CUDA, an installed torchao logs a warning for each
CUDA kernel library it cannot load, and torch one per enum it registers, when transformers imports it (which
importing diffusers does). Neither concerns a budcache user; both are silenced while budcache imports its
dependencies."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

NOISY = ("torchao", "torch.utils._pytree")


@contextmanager
def quiet_imports() -> Iterator[None]:
    """Warnings of the :data:`NOISY` loggers off for the ``with`` block, their levels restored after it."""
    loggers = [logging.getLogger(name) for name in NOISY]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
