"""Resumable alignment: after every epoch, the state to continue from (phase, learned parameters,
optimizer and learning-rate state, the losses so far, the best schedule yet), written atomically.

Alignment is deterministic (full-batch gradients over fixed calibration batches), so a resumed run
goes on exactly where the interrupted one stopped and ends with the schedule an uninterrupted run
returns. A resume recomputes the teachers (K forwards per sample) and loses at most the epoch that
was running. A checkpoint written for another plan, configuration or calibration set is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_write_bytes
from ..errors import CheckpointError

FORMAT = "budcache-align-checkpoint/1"


def identity(
    plan: Any, config: Any, teacher_sigmas: Sequence[float], batches: Sequence[Any], validation: Sequence[Any]
) -> dict:
    """What a checkpoint must match to be resumed: the plan (mask, rules, schedule), the training
    settings, the teacher's schedule and the calibration and validation noise."""

    def digest(bs: Sequence[Any]) -> str:
        return hashlib.sha256(b"".join(b.noise.detach().cpu().float().numpy().tobytes() for b in bs)).hexdigest()[:16]

    settings = {k: v for k, v in dataclasses.asdict(config).items() if k != "checkpointing"}  # memory only
    return {
        "mask": list(plan.mask),
        "rules": plan.step_rules,
        "sigmas": [float(s) for s in plan.sigmas],
        "teacher_sigmas": [float(s) for s in teacher_sigmas],
        "config": settings,
        "calibration": digest(batches),
        "validation": digest(validation),
    }


def save(path: Path, state: dict) -> None:
    """Write ``state`` (plain values and tensors) to ``path`` atomically."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def unfinished(path: Path) -> str | None:
    """Where the alignment saved at ``path`` stopped, if it did not finish (None: finished)."""
    state = load(path)
    if state["finished"]:
        return None
    return f"epoch {state['epoch']} of the {'model times' if state['phase'] else 'sigmas'}"


def load(path: Path, expected: dict | None = None) -> dict:
    """The state saved at ``path``, refused unless it was written for the alignment ``expected`` describes
    (None: any)."""
    try:
        state = torch.load(path, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such alignment checkpoint; align without --resume") from None
    except Exception as e:  # noqa: BLE001 (any unreadable file: one line, not a traceback)
        raise CheckpointError(f"{path}: not a readable alignment checkpoint ({e}); delete it to start afresh") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an alignment checkpoint ({FORMAT}); delete it to start afresh")
    for field, value in (expected or {}).items():
        if state["identity"].get(field) != value:
            raise CheckpointError(
                f"{path} was written for another alignment ({field} differs); delete it or align without --resume"
            )
    return state
