"""Every covered DiT family at K=28, B=10 on its tiny random config (real pipeline, CPU).

Prints JSON per family: block-stack executions per branch (counted by a hook inside the first
block, independent of budcache's own counters), the relative error of the cached output to full
compute (uniform plan with the forced steps, repeat rule), and the per-call overhead of the hooks
in microseconds (an all-ones plan against no plan, best of ``--repeats`` interleaved runs).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import _root  # noqa: F401  (tests.fixtures)
import torch

from budcache.evaluation import metrics
from tests.fixtures import coverage

K, B = 28, 10


def measure(name: str, repeats: int) -> dict:
    pipe, kwargs = coverage.FAMILIES[name]()
    run = lambda: coverage.run(pipe, kwargs, K)  # noqa: E731
    with torch.no_grad():
        full = run()
        plan, ones = coverage.plans(pipe, kwargs, K, B)
        spy = coverage.Spy(coverage.experts(pipe))
        try:
            with coverage.apply(pipe, plan) as handle:
                cached = run()
                branches = handle.summary()
        finally:
            spy.remove()
        calls = len(spy.timesteps)
        plain = hooked = float("inf")
        for _ in range(repeats):  # interleaved, so drift in machine load hits both alike
            plain = min(plain, metrics.timed(run, 1)[1])
            with coverage.apply(pipe, ones):
                hooked = min(hooked, metrics.timed(run, 1)[1])
    error = sum(
        float((c.float() - f.float()).norm() / f.float().norm())
        for c, f in zip(coverage.as_list(cached), coverage.as_list(full))
    ) / len(coverage.as_list(full))
    return {
        "pipeline": type(pipe).__name__,
        "mask": plan.strip,
        "computed_per_branch": {b: c["computed"] for b, c in branches.items()},
        "block_stack_executions": spy.executions,
        "relative_error": round(error, 5),
        "hook_overhead_us_per_call": round(1e6 * (hooked - plain) / calls, 1),
        "full_ms": round(1e3 * plain, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench-out/coverage.json"))
    a = parser.parse_args()
    torch.set_num_threads(a.threads)
    results = {name: measure(name, a.repeats) for name in coverage.FAMILIES}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
