"""Resumable searches: the evaluator's memo table, written atomically every few evaluations.

The search is deterministic for a seed, so resuming replays it from the start with every
earlier evaluation answered from the saved table (no forward passes) and continues where the
interrupted run stopped: the final plan is the one an uninterrupted run finds.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch.distributed as dist

from ..errors import CheckpointError
from .evaluator import Evaluator

FORMAT = "budcache-search-checkpoint/1"


def identity(evaluate: Evaluator, budget: int, config: Any, model: Any = None) -> dict:
    """What a checkpoint must match to be resumed: the problem (sigmas, solver, rule, calibration
    noise, model), the budget and the search settings."""
    noise = hashlib.sha256(b"".join(b.noise.detach().cpu().float().numpy().tobytes() for b in evaluate.batches))
    settings = {k: v for k, v in vars(config).items() if k != "checkpoint_every"}
    world = dist.get_world_size() if evaluate.distributed else 1
    return {"budget": budget, "sigmas": evaluate.sigmas, "solver": evaluate.solver.name, "rule": evaluate.rule,
            "metric": evaluate.metric,
            "calibration": noise.hexdigest()[:16], "world_size": world, "model": model,
            "config": json.loads(json.dumps(settings, default=str))}


def _table(saved: dict) -> dict[tuple[int, ...], float]:
    return {tuple(int(c) for c in key.split(",")): float(loss) for key, loss in saved.items()}


def _keys(memo: dict[tuple[int, ...], float]) -> dict[str, float]:
    return {",".join(map(str, k)): v for k, v in memo.items()}


class Checkpoint:
    def __init__(self, path: str | Path, ident: dict, every: int = 25):
        self.path, self.ident, self.every, self.saved_at = Path(path), ident, every, 0
        self.rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0  # rank 0 writes

    def restore(self, evaluate: Evaluator) -> int:
        """Load a saved table into ``evaluate``; returns how many evaluations it holds."""
        try:
            data = json.loads(self.path.read_text())
            if data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format')!r}")
            memo = _table(data["memo"])
            subsets = {int(m): _table(table) for m, table in data.get("subsets", {}).items()}
            forwards = int(data["forwards"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{self.path}: not a readable search checkpoint ({e}); delete it to start afresh") from None
        for field, value in self.ident.items():
            if field == "calibration" and self.rank:  # other ranks hold other shards than rank 0 hashed
                continue
            if data.get("identity", {}).get(field) != value:
                raise CheckpointError(f"{self.path} was written for another search ({field} differs); delete it or "
                                "search without --resume")
        evaluate.load_state_dict({"memo": memo, "forwards": forwards, "subsets": subsets})
        self.saved_at = len(memo)
        return len(memo)

    def maybe_save(self, evaluate: Evaluator) -> None:
        if evaluate.evaluations - self.saved_at >= self.every:
            self.save(evaluate)

    def save(self, evaluate: Evaluator) -> None:
        self.saved_at = evaluate.evaluations
        if self.rank:
            return
        state = evaluate.state_dict()
        data = {"format": FORMAT, "identity": self.ident, "forwards": state["forwards"],
                "memo": _keys(state["memo"]), "subsets": {str(m): _keys(t) for m, t in state["subsets"].items()}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
