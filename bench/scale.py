"""Search at scale on the demo model: 1 process vs 2 processes (torchrun, gloo, CPU) on the same
problem (K=20, B=6, 16 calibration samples, default effort), with identical final plans asserted;
and batched vs unbatched candidate evaluation in one process.

Prints JSON: wall time, evaluations and forwards per configuration (one thread per process; the
single process also with 2 threads, so the comparison uses the same cores).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

from budcache.plan import CachePlan

ARGS = ["search", "--model", "demo", "--steps", "20", "--budget", "6", "--calib", "16", "--no-progress"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(name: str, launcher: list[str], threads: int, out: Path) -> dict:
    plan_path = out / f"{name}.json"
    start = time.perf_counter()
    subprocess.run(
        [*launcher, "-m", "budcache.cli", "--threads", str(threads), *ARGS, "--out", str(plan_path)],
        check=True,
        capture_output=True,
    )
    plan = CachePlan.load(plan_path)
    return {
        "config": name,
        "seconds": round(time.perf_counter() - start, 1),
        "mask": plan.strip,
        "objective": plan.record.objective,
        "evaluations": plan.record.evaluations,
        "forwards": plan.record.forwards,
        "calibration_size": plan.record.calibration_size,
    }


def batched() -> list[dict]:
    """One process, one thread: the same search with hill-climbing neighbours evaluated 1, 8 and
    32 at a time in batched forwards (same masks, same losses)."""
    import torch

    from budcache.demo.model import load_demo_model
    from budcache.demo.problem import demo_batches, demo_denoisers, demo_inputs
    from budcache.sampling import linear_sigmas
    from budcache.search import EFFORTS, Evaluator, run_search

    torch.set_num_threads(1)
    model, rows = load_demo_model(), []
    with demo_denoisers(model, "residual") as make:
        for group in (1, 8, 32):
            evaluate = Evaluator(demo_batches(make, *demo_inputs(16, 0)), linear_sigmas(20))
            start = time.perf_counter()
            result = run_search(
                evaluate, 6, dataclasses.replace(EFFORTS["thorough"], batch_candidates=group), progress=False
            )
            seconds = time.perf_counter() - start
            rows.append(
                {
                    "batch_candidates": group,
                    "mask": "".join("#" if m else "." for m in result.mask),
                    "evaluations": evaluate.evaluations,
                    "forwards": evaluate.forwards,
                    "seconds": round(seconds, 1),
                    "evaluations_per_second": round(evaluate.evaluations / seconds, 1),
                }
            )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", type=Path, default=Path("bench-out/scale"))
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(_port())]
    rows = [
        run("1 process, 1 thread", [sys.executable], 1, a.out),
        run("1 process, 2 threads", [sys.executable], 2, a.out),
        run("2 processes (torchrun, gloo), 1 thread each", torchrun, 1, a.out),
    ]
    same = len({r["mask"] for r in rows}) == 1
    result = {
        "rows": rows,
        "identical_plans": same,
        "speedup_2_processes_vs_1": round(rows[0]["seconds"] / rows[2]["seconds"], 2),
        "batched_candidates": batched(),
    }
    (a.out / "scale.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    assert same, "the distributed search must find the single-process plan"


if __name__ == "__main__":
    main()
