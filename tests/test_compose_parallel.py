"""A plan under diffusers' context parallelism (ring and Ulysses attention), launched with torchrun.

diffusers places every rank of a context-parallel model on an accelerator (``rank % torch.accelerator
.device_count()``), which is a ZeroDivisionError on a machine without one, before budcache is involved: on CPU
the test shows that diffusers alone fails so; with two GPUs it runs the plan (tests/fixtures/context_parallel.py).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.fixtures.composability import FAMILIES, MASK, Row

SCRIPT = Path(__file__).resolve().parent / "fixtures" / "context_parallel.py"
REASON = (
    "diffusers' enable_parallelism puts each rank on an accelerator: rank % torch.accelerator.device_count() "
    "is a ZeroDivisionError without one"
)
MODES = {
    "context parallelism (ring attention, torchrun)": "ring",
    "context parallelism (Ulysses attention, torchrun)": "ulysses",
}
ROWS = [Row(feature, family, "accelerator", REASON) for feature in MODES for family in FAMILIES]
TWO_GPUS = torch.cuda.is_available() and torch.cuda.device_count() >= 2


def _torchrun(*args: str) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_port",
            str(port),
            str(SCRIPT),
            *args,
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(TWO_GPUS, reason="the accelerator case runs the plan itself")
def test_without_an_accelerator_diffusers_itself_refuses_context_parallelism():
    """What the rows say: diffusers alone (no plan) fails on CPU; if it stops failing, the rows must change."""
    result = _torchrun("FLUX", "ring", "--alone")
    assert result["error"].startswith("ZeroDivisionError"), result


@pytest.mark.skipif(not TWO_GPUS, reason=REASON)
@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_a_plan_under_context_parallelism(row: Row):
    """Exactly B block-stack executions per rank and branch, the all-compute plan bit-identical to the parallel run
    alone, and the B-step plan within 1e-2 relative of the same plan on one GPU (attention split over ranks sums in
    another order)."""
    result = _torchrun(row.family, MODES[row.feature])
    assert "error" not in result, result
    branches = len(result["summary"])
    assert result["executions"] == sum(MASK) * branches
    assert all(
        counts == {"computed": sum(MASK), "reused": len(MASK) - sum(MASK)} for counts in result["summary"].values()
    )
    assert result["all_compute_equal"]
    assert result["plan_max_diff"] <= 1e-2 * result["scale"]
