"""Wall time of a plan under group offloading (block level, CPU) against the offloaded full run.

A random FLUX transformer (4 double + 8 single blocks, width 128; 48x48 latents: 576 image tokens, about 70 ms a
step on one thread) in a ``FluxPipeline``, offloaded with ``enable_group_offload(onload_device=cpu,
offload_device=cpu, offload_type="block_level", num_blocks_per_group=1)``, then the plan applied (this order: with
the plan applied first, reused steps still onload every block). On CPU the transfers move nothing; the hooks,
groups and ``onload_`` / ``offload_`` calls are a GPU's.

Timed interleaved, each repeat in a shuffled order (so that drifting load on a shared machine hits all alike),
median of ``--repeats``: the offloaded full run (no plan), plans of uniform masks for B in a sweep over 1 .. K-1,
the all-compute plan (the hooks' own cost), and the plain full run (neither offloading nor plan). A generation
under a plan costs ``fixed + B * stack``: ``fixed`` is what a generation costs outside the block stack (the K
steps' embeddings, output head, scheduler step, hooks, the top-level group's onload, and the call's set-up),
``stack`` one step's block stack with its groups' onloads. ``fixed`` is measured from the
two ends: the B=1 plan and the offloaded full run, ``fixed = T(1) - (T_full - T(1)) / (K - 1)`` (a least-squares
line over the sweep is printed beside it). Predicted, per B: ``fixed + B/K * (T_full - fixed)``. Goal: every B's
measured time within 5% of its prediction (medians; beside them, the median over repeats of each repeat's own
ratio, which cancels slow drift). Also printed: block-group onloads per generation, full and under the
plan (a reused step onloads no block).

    python bench/offload_time.py [--repeats 9] [--steps 20] [--size 48]
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import statistics
import time
from collections.abc import Callable

import _root  # noqa: F401  (tests.fixtures)
import torch
from diffusers import FluxTransformer2DModel

import budcache
from budcache.plan import CachePlan, uniform_mask
from tests.fixtures.composability import onloads
from tests.fixtures.tiny import tiny_flux_pipeline

CPU = torch.device("cpu")


def flux_transformer(seed: int = 0) -> FluxTransformer2DModel:
    """diffusers' tiny FLUX config, wider (4 heads x 32) and deeper (4 double, 8 single blocks); its text and
    pooled widths stay 32, so the tiny pipeline's call works unchanged."""
    torch.manual_seed(seed)
    return (
        FluxTransformer2DModel(
            patch_size=1,
            in_channels=4,
            num_layers=4,
            num_single_layers=8,
            attention_head_dim=32,
            num_attention_heads=4,
            joint_attention_dim=32,
            pooled_projection_dim=32,
            axes_dims_rope=[8, 12, 12],
        )
        .eval()
        .requires_grad_(False)
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--size", type=int, default=48, help="latent height and width (tokens: (size / 2) ** 2)")
    a = p.parse_args()
    torch.set_num_threads(1)
    K = a.steps
    budgets = sorted({1, K // 5, 2 * K // 5, 3 * K // 5, 4 * K // 5, K - 1} - {0})
    plans = {b: CachePlan(num_steps=K, budget=b, mask=uniform_mask(K, b)) for b in [*budgets, K]}

    call = dict(
        prompt_embeds=torch.ones(1, 8, 32),
        pooled_prompt_embeds=torch.ones(1, 32),
        height=a.size,
        width=a.size,
        num_inference_steps=K,
        output_type="latent",
    )
    plain = tiny_flux_pipeline(flux_transformer())
    pipe = tiny_flux_pipeline(flux_transformer())
    pipe.transformer.enable_group_offload(
        onload_device=CPU, offload_device=CPU, offload_type="block_level", num_blocks_per_group=1
    )

    def run(target) -> float:
        start = time.perf_counter()
        target(**call, generator=torch.Generator().manual_seed(0))
        return time.perf_counter() - start

    def run_plan(b: int) -> float:
        with budcache.apply(pipe, plans[b]):
            return run(pipe)

    configs: dict[str, Callable[[], float]] = {
        "plain": lambda: run(plain),
        "full": lambda: run(pipe),
        "all-compute plan": lambda: run_plan(K),
        **{str(b): functools.partial(run_plan, b) for b in budgets},
    }
    order = random.Random(0)
    with torch.no_grad():
        for timed in configs.values():  # warm-up
            timed()
        times: dict[str, list[float]] = {name: [] for name in configs}
        for _ in range(a.repeats):  # each repeat in another order: drifting load hits no configuration alone
            names = list(configs)
            order.shuffle(names)
            for name in names:
                times[name].append(configs[name]())
        with onloads(pipe.transformer) as full_onloads:
            run(pipe)
        b_mid = budgets[len(budgets) // 2]
        with onloads(pipe.transformer) as plan_onloads, budcache.apply(pipe, plans[b_mid]):
            run(pipe)

    med = {k: statistics.median(v) for k, v in times.items()}
    t_full, t_one = med["full"], med["1"]
    fixed = t_one - (t_full - t_one) / (K - 1)
    xs, ys = [*budgets, K], [*(med[str(b)] for b in budgets), t_full]
    slope, intercept = _line(xs, ys)
    rows = []
    for b in budgets:
        predicted = fixed + b / K * (t_full - fixed)
        paired = []  # the same within each repeat (its own full run and B=1 plan): slow drift cancels
        for full_r, one_r, plan_r in zip(times["full"], times["1"], times[str(b)]):
            fixed_r = one_r - (full_r - one_r) / (K - 1)
            paired.append(plan_r / (fixed_r + b / K * (full_r - fixed_r)))
        rows.append(
            {
                "budget": b,
                **({"role": "with the full run, defines fixed_s"} if b == 1 else {}),
                "measured_s": med[str(b)],
                "predicted_s": predicted,
                "measured_over_predicted": med[str(b)] / predicted,
                "per_repeat_measured_over_predicted_median": statistics.median(paired),
                "spread_s": [min(times[str(b)]), max(times[str(b)])],
            }
        )
    results = {
        "model": "random FLUX transformer, 4 double + 8 single blocks, width 128, "
        f"{(a.size // 2) ** 2} image tokens, FluxPipeline, float32, 1 thread",
        "offloading": "enable_group_offload(cpu -> cpu, block_level, num_blocks_per_group=1), then budcache.apply",
        "steps": K,
        "repeats": a.repeats,
        "torch_threads": torch.get_num_threads(),
        "plain_full_s": med["plain"],
        "offloaded_full_s": t_full,
        "offloading_overhead": t_full / med["plain"] - 1,
        "all_compute_plan_s": med["all-compute plan"],
        "plan_hook_overhead_per_step_ms": (med["all-compute plan"] - t_full) / K * 1e3,
        "fixed_s": fixed,
        "fixed_per_step_ms": fixed / K * 1e3,
        "block_stack_per_step_ms": (t_full - fixed) / K * 1e3,
        "least_squares": {"fixed_s": intercept, "block_stack_per_step_ms": slope * 1e3},
        "plans": rows,
        "block_onloads_per_generation": {
            "full": full_onloads["blocks"],
            f"plan B={b_mid}": plan_onloads["blocks"],
            "expected_under_plan": full_onloads["blocks"] * b_mid // K,
        },
        "goal_within_5pct": all(abs(r["measured_over_predicted"] - 1) <= 0.05 for r in rows),
    }
    print(json.dumps(results, indent=1))


def _line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares slope and intercept."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return slope, my - slope * mx


if __name__ == "__main__":
    main()
