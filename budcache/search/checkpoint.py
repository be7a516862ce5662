"""Resumable searches: the evaluator's memo table, written atomically every few evaluations.

The search is deterministic for a seed, so resuming replays it from the start with every
earlier evaluation answered from the saved table (no forward passes) and continues where the
interrupted run stopped: the final plan is the one an uninterrupted run finds. What a resume
does spend again: the teacher trajectory (K forwards per sample) and the prefix states, which
the file does not hold (the first new masks after the replay start from an earlier step). The
search's ``forwards`` counts both runs: the saved count plus everything the resumed run spends.

A checkpoint carries a checksum of its contents, and a search holds an exclusive lock on
``.<name>.lock`` beside it while it runs: a second search on the same checkpoint is refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch.distributed as dist

from .._io import atomic_write_text
from ..errors import CheckpointError
from .evaluator import Evaluator

try:
    import fcntl
except ImportError:  # Windows has no fcntl: searches are not locked there
    fcntl = None

FORMAT = "budcache-search-checkpoint/2"
FORMATS = ("budcache-search-checkpoint/1", FORMAT)  # /1: without checksum
_HELD: dict[Path, int | None] = {}  # lock files this process holds (a nested hold is free)


def identity(evaluate: Evaluator, budget: int, config: Any, model: Any = None) -> dict:
    """What a checkpoint must match to be resumed: the problem (sigmas, solver, rule, calibration
    noise, model), the budget and the search settings."""
    noise = hashlib.sha256(b"".join(b.noise.detach().cpu().float().numpy().tobytes() for b in evaluate.batches))
    settings = {k: v for k, v in vars(config).items() if k != "checkpoint_every"}
    world = dist.get_world_size() if evaluate.distributed else 1
    shifts = [b.shift for b in evaluate.batches]  # a calibration of several sizes
    return {
        "budget": budget,
        "sigmas": evaluate.sigmas,
        "solver": evaluate.solver.name,
        "rule": evaluate.rule,
        "metric": evaluate.metric,
        "calibration": noise.hexdigest()[:16],
        "world_size": world,
        "model": model,
        "config": json.loads(json.dumps(settings, default=str)),
        **({"shifts": shifts} if any(f != 1.0 for f in shifts) else {}),
    }


def lock_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


def _acquire(lock: Path, path: Path) -> int | None:
    """A descriptor holding the exclusive lock ``lock`` (None without ``fcntl``); the checkpoint ``path``
    must be a file in a writable folder (refused before the search, not at its first write)."""
    if path.is_dir():
        raise CheckpointError(f"the checkpoint {path} is a folder; name a file")
    if fcntl is None:
        return None
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise CheckpointError(
            f"cannot write beside the checkpoint {path} ({e.strerror or e}); choose a writable location"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise CheckpointError(
            f"{path} is in use by another search (lock {lock.name}); wait for it to end, "
            "or give this one another --checkpoint"
        ) from None
    return fd


@contextmanager
def hold(path: str | Path) -> Iterator[None]:
    """Hold the exclusive lock of the checkpoint ``path`` while the block runs (re-entrant within a
    process); a :class:`CheckpointError` when another process holds it."""
    lock = lock_path(path).resolve()
    outer = lock not in _HELD
    if outer:
        _HELD[lock] = _acquire(lock, Path(path))
    try:
        yield
    finally:
        if outer:
            fd = _HELD.pop(lock)
            if fd is not None:
                os.close(fd)


def held(path: str | Path | None) -> AbstractContextManager:
    """:func:`hold` for the process that writes checkpoints (rank 0); nothing without a ``path``."""
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    return hold(path) if path is not None and not rank else nullcontext()


def _table(saved: dict) -> dict[tuple[int, ...], float]:
    """A saved memo table: schedule strings ("1,0,2,...") -> loss."""
    return {tuple(int(c) for c in key.split(",")): float(loss) for key, loss in saved.items()}


def _keys(memo: dict[tuple[int, ...], float]) -> dict[str, float]:
    return {",".join(map(str, k)): v for k, v in memo.items()}


def _checksum(data: dict) -> str:
    body = {k: v for k, v in data.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def read(path: str | Path, num_steps: int | None = None) -> dict:
    """A checkpoint file's contents (``memo`` keyed by schedule tuples), or a :class:`CheckpointError`
    that says why it cannot be used. ``num_steps``: the length every saved schedule must have."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or data.get("format") not in FORMATS:
            raise ValueError(f"format {data.get('format') if isinstance(data, dict) else None!r}")
        if data["format"] == FORMAT and data.get("checksum") != _checksum(data):
            raise ValueError("its checksum does not match its contents")
        if not isinstance(data.get("identity"), dict):
            raise ValueError("no identity")
        memo = _table(data["memo"])
        spreads = _table(data.get("spreads", {}))
        subsets = {int(m): _table(table) for m, table in data.get("subsets", {}).items()}
        forwards = data["forwards"]
        if not isinstance(forwards, int) or isinstance(forwards, bool) or forwards < 0:
            raise ValueError(f"forwards {forwards!r}")
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint; search without --resume") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        raise CheckpointError(f"{path}: not a readable search checkpoint ({e}); delete it to start afresh") from None
    tables = [memo, *subsets.values()]
    if any((num_steps is not None and len(k) != num_steps) or min(k) < 0 for t in tables for k in t) or any(
        math.isnan(v) or v < 0 for t in tables for v in t.values()
    ):
        raise CheckpointError(
            f"{path}: not a readable search checkpoint (a saved schedule or loss is out of range); "
            "delete it to start afresh"
        )
    return {**data, "memo": memo, "subsets": subsets, "spreads": spreads}


class Checkpoint:
    def __init__(self, path: str | Path, ident: dict, every: int = 25):
        self.path, self.ident, self.every, self.saved_at = Path(path), ident, every, 0
        self.rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0  # rank 0 writes

    def restore(self, evaluate: Evaluator) -> int:
        """Load a saved table into ``evaluate``; returns how many evaluations it holds. The forwards
        this run spent before (the teacher) are added to the saved count."""
        data = read(self.path, evaluate.num_steps)
        for field, value in self.ident.items():
            if field == "calibration" and self.rank:  # other ranks hold other shards than rank 0 hashed
                continue
            if data["identity"].get(field) != value:
                raise CheckpointError(
                    f"{self.path} was written for another search ({field} differs); delete it or "
                    "search without --resume"
                )
        evaluate.load_state_dict(
            {
                "memo": data["memo"],
                "subsets": data["subsets"],
                "spreads": data["spreads"],
                "forwards": data["forwards"] + evaluate.forwards,
            }
        )
        self.saved_at = len(data["memo"])
        return len(data["memo"])

    def maybe_save(self, evaluate: Evaluator) -> None:
        if evaluate.evaluations - self.saved_at >= self.every:
            self.save(evaluate)

    def save(self, evaluate: Evaluator, finished: bool = False) -> None:
        """Write the evaluations so far; ``finished``: the search ended without interruption (a fresh
        search may then overwrite the file; the CLI refuses to overwrite an unfinished one)."""
        self.saved_at = evaluate.evaluations
        if self.rank:
            return
        state = evaluate.state_dict()
        data = {
            "format": FORMAT,
            "identity": self.ident,
            "forwards": state["forwards"],
            "finished": finished,
            "memo": _keys(state["memo"]),
            "spreads": _keys(state["spreads"]),
            "subsets": {str(m): _keys(t) for m, t in state["subsets"].items()},
        }
        atomic_write_text(self.path, json.dumps({**data, "checksum": _checksum(data)}))
