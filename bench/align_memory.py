"""Memory of stage-2 backpropagation on the demo model: K in {10, 20, 28, 50}, with and without
activation checkpointing per computed step (B = K / 3, uniform mask, 16 samples).

Prints JSON: the bytes autograd keeps for backward (counted with saved-tensor hooks, so the figure
is exact and independent of the allocator) and the wall time of one forward + backward.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from budcache.align import SigmaSchedule, student
from budcache.demo.model import load_demo_model
from budcache.demo.problem import demo_denoisers, demo_inputs
from budcache.plan import uniform_mask
from budcache.sampling import linear_sigmas
from budcache.sampling.solver import Euler


def measure(model, make, noise, labels, k: int, checkpointing: bool) -> dict:
    mask = uniform_mask(k, max(2, k // 3))
    schedule = SigmaSchedule(linear_sigmas(k))
    sizes: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        sizes[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    start = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        x = student(make(labels), noise, Euler(schedule().to(noise.dtype)), mask, ["repeat"] * k, checkpointing)
    x.pow(2).mean().backward()
    return {
        "steps": k,
        "budget": sum(mask),
        "checkpointing": checkpointing,
        "saved_mb": round(sum(sizes.values()) / 2**20, 2),
        "seconds": round(time.perf_counter() - start, 3),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("bench-out/align_memory.json"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    model = load_demo_model()
    noise, labels = demo_inputs(a.samples, 0)
    with demo_denoisers(model, "residual") as make:
        rows = [measure(model, make, noise, labels, k, c) for k in (10, 20, 28, 50) for c in (False, True)]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(rows, indent=1))
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
