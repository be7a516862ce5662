"""What a resume costs: the same search on the demo model (K=12, B=4, ``--effort thorough``, 32
calibration samples) once uninterrupted, and once killed with SIGKILL after half its evaluations
reached the checkpoint, then resumed with ``--resume``.

Prints JSON: evaluations and forwards of both, what the checkpoint held at the kill, and whether the
plans agree. The resumed plan's ``forwards`` = the checkpoint's + everything the resumed run spent
(its teacher, K forwards per sample, included).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from budcache.plan import CachePlan

ARGS = [
    "--threads",
    "1",
    "search",
    "--model",
    "demo",
    "--steps",
    "12",
    "--budget",
    "4",
    "--effort",
    "thorough",
    "--no-progress",
]


def search(out: Path, *extra: str) -> CachePlan:
    subprocess.run(
        [sys.executable, "-m", "budcache", *ARGS, "--out", str(out), *extra], check=True, capture_output=True
    )
    return CachePlan.load(out)


def killed_at(out: Path, evaluations: int) -> dict:
    """Start the search, SIGKILL it once its checkpoint holds ``evaluations``; the checkpoint then."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "budcache", *ARGS, "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ckpt = out.with_suffix(".checkpoint.json")
    while not (ckpt.exists() and len(json.loads(ckpt.read_text() or "{}").get("memo", {})) >= evaluations):
        if proc.poll() is not None:
            raise RuntimeError("the search ended before it could be killed")
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return json.loads(ckpt.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", type=Path, default=Path("bench-out/resume_cost"))
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    for old in a.out.glob("*.json"):
        old.unlink()
    whole = search(a.out / "whole.json")
    saved = killed_at(a.out / "killed.json", whole.record.evaluations // 2)
    resumed = search(a.out / "killed.json", "--resume")
    result = {
        "uninterrupted": {"evaluations": whole.record.evaluations, "forwards": whole.record.forwards},
        "checkpoint_at_kill": {"evaluations": len(saved["memo"]), "forwards": saved["forwards"]},
        "resumed": {
            "evaluations": resumed.record.evaluations,
            "forwards": resumed.record.forwards,
            "teacher_forwards": 12 * resumed.record.calibration_size,
        },
        "same_plan": resumed.mask == whole.mask and resumed.record.objective == whole.record.objective,
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
