"""Running a command: every failure is one line on stderr and an exit code.

Exit codes: 0 done; 1 the work failed (an error found while running, e.g. a checkpoint of
another search; or an unexpected error, whose traceback ``--debug`` or ``BUDCACHE_DEBUG=1``
prints); 2 the command line or an input file is wrong (nothing was loaded or computed);
130 / 143 interrupted by Ctrl-C / SIGTERM (a search saves its best plan first).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

from ..errors import BudcacheError


class UsageError(Exception):
    """A command-line mistake (an option, or a file it names): one line, exit 2."""

    def __init__(self, message: str, prog: str = "budcache"):
        super().__init__(message)
        self.prog = prog


class Exit(SystemExit):
    """The exit of a failed command; ``str()`` is the line it printed (for tests and callers of ``main``)."""

    def __init__(self, line: str, code: int):
        super().__init__(code)
        self.line = line

    def __str__(self) -> str:
        return self.line


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (no usage block) raised as :class:`UsageError`."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)", self.prog)


def one_line(text: str) -> str:
    return re.sub(r"\s*\n\s*", " ", str(text)).strip()


def fail(line: str, code: int) -> NoReturn:
    print(one_line(line), file=sys.stderr)
    raise Exit(one_line(line), code)


@contextmanager
def interruptible() -> Iterator[list[int]]:
    """Ctrl-C and SIGTERM both raise KeyboardInterrupt (a search saves its best plan on it); the
    yielded list receives the signals that arrived."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def interrupt(signum: int, frame: object) -> None:
        received.append(signum)
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def run(parser: argparse.ArgumentParser, argv: list[str] | None) -> None:
    """Parse, check (:mod:`.checks`), run; map every outcome to one line and an exit code."""
    debug = os.environ.get("BUDCACHE_DEBUG", "") not in ("", "0")
    received: list[int] = []
    a = None
    try:
        a = parser.parse_args(argv)
        debug = debug or a.debug
        if a.threads is not None:
            import torch

            torch.set_num_threads(a.threads)
        try:
            a.check(a)
        except BudcacheError as e:  # a plan or checkpoint file named on the command line
            raise UsageError(str(e)) from None
        with interruptible() as received:
            a.func(a)
    except UsageError as e:
        fail(f"{e.prog if a is None or e.prog != 'budcache' else 'budcache ' + a.command}: error: {e}", 2)
    except KeyboardInterrupt:
        signum = received[0] if received else signal.SIGINT
        fail(f"budcache: interrupted ({signal.Signals(signum).name}) before the command finished", 128 + signum)
    except BudcacheError as e:
        fail(f"budcache: error: {e}", 128 + received[0] if received else 1)
    except Exception as e:
        if debug:
            traceback.print_exc()
        fail(f"budcache: error: unexpected {type(e).__name__}: {e} (the traceback: --debug or BUDCACHE_DEBUG=1)", 1)
    if received:  # a search stopped by the signal saved its plan and said where
        raise Exit("", 128 + received[0])
