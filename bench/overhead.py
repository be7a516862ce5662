"""Overhead of applying a plan: measured speedup of a B=10 plan over full compute at K=28.

Prints JSON for the demo model (its Euler loop calling the transformer) and a tiny offline
FluxPipeline: the wall-clock speedup measured in one run, the ideal speedup predicted by the
counted transformer time (each reused step saves exactly the block-stack time: the median
transformer call of the full run minus the median reused call of the plan run), their ratio
(goal >= 0.95), and the per-step overhead of the hooks in microseconds (an all-ones plan
against no hooks).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import _root  # noqa: F401  (tests.fixtures)
import torch

import budcache
from budcache.plan import CachePlan, uniform_mask

K, B = 28, 10


class CallTimer:
    """Times every call of a module (torch hooks wrap the diffusers hooks too)."""

    def __init__(self, module: torch.nn.Module):
        self.times: list[float] = []
        self._start = 0.0
        self.handles = [
            module.register_forward_pre_hook(lambda *a: self._begin()),
            module.register_forward_hook(lambda *a: self.times.append(time.perf_counter() - self._start)),
        ]

    def _begin(self) -> None:
        self._start = time.perf_counter()

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def best_of(fn, repeats: int) -> float:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return min(out)


def measure(name: str, target, transformer: torch.nn.Module, run, repeats: int) -> dict:
    plan = CachePlan(num_steps=K, budget=B, mask=uniform_mask(K, B))
    full_times, hooked_times, plan_times = [], [], []
    with torch.no_grad():
        for _ in range(2):
            run()  # warm-up
        for _ in range(repeats):  # interleaved, so drifting machine load hits all three alike
            full_times.append(best_of(run, 1))
            with budcache.apply(target, CachePlan(num_steps=K, budget=K, mask=[1] * K)):
                hooked_times.append(best_of(run, 1))
            with budcache.apply(target, plan):
                plan_times.append(best_of(run, 1))
        t_full, t_hooked, t_plan = min(full_times), min(hooked_times), min(plan_times)
        timer = CallTimer(transformer)
        run()
        timer.remove()
        full_call = statistics.median(timer.times)
        with budcache.apply(target, plan):
            timer = CallTimer(transformer)
            run()
            timer.remove()
    compute = statistics.median(t for t, m in zip(timer.times, plan.mask) if m)
    reuse = statistics.median(t for t, m in zip(timer.times, plan.mask) if not m)
    ideal = t_full / (t_full - (K - B) * (full_call - reuse))
    measured = t_full / t_plan
    return {
        "model": name,
        "steps": K,
        "budget": B,
        "full_s": t_full,
        "plan_s": t_plan,
        "measured_speedup": measured,
        "ideal_speedup": ideal,
        "measured_over_ideal": measured / ideal,
        "full_call_ms": full_call * 1e3,
        "computed_call_ms": compute * 1e3,
        "reused_call_ms": reuse * 1e3,
        "hook_overhead_us_per_step": (t_hooked - t_full) / K * 1e6,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("bench-out/overhead.json"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    from budcache.demo.model import load_demo_model
    from budcache.demo.problem import demo_inputs
    from budcache.sampling import euler, linear_sigmas

    model = load_demo_model()
    noise, labels = demo_inputs(16, 0)
    demo = measure(
        "demo DigitsFlux (16 samples)",
        model.transformer,
        model.transformer,
        lambda: euler(lambda x, s: model(x, torch.tensor(s), labels), noise, linear_sigmas(K)),
        a.repeats,
    )

    from tests.fixtures.tiny import tiny_flux_pipeline

    pipe = tiny_flux_pipeline()
    transformer = pipe.transformer
    run = lambda: pipe(
        prompt_embeds=torch.ones(1, 8, 32),
        pooled_prompt_embeds=torch.ones(1, 32),
        height=8,  # noqa: E731
        width=8,
        num_inference_steps=K,
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
    )
    tiny = measure("tiny FluxPipeline (diffusers test config)", pipe, transformer, run, a.repeats)
    results = {
        "results": [demo, tiny],
        "goal_measured_over_ideal_ge_0.95": all(r["measured_over_ideal"] >= 0.95 for r in (demo, tiny)),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
