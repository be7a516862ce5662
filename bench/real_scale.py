"""A plan at real scale on a GPU, eager and under torch.compile (fullgraph=True).

Builds the FLUX.1-dev (19 double + 38 single blocks, 24 heads x 128) and Wan2.1-T2V-1.3B (30 blocks,
12 heads x 128) transformers from their published configs with random bf16 weights (only time and
memory mean anything here, never quality; the VAEs are tiny, the runs stop at the latents) and
prints one JSON object per model:

* eager and compiled: the full run, the plan run, the ideal speedup predicted by the counted
  transformer time (each reused step saves a computed step minus a reused one) and measured / ideal;
* the plan hook's overhead per step (an all-ones plan against none), eager and compiled;
* host-device synchronisations per step inside the transformer calls, with and without a plan
  (``torch.cuda.set_sync_debug_mode("warn")``), and whether the plan runs under ``"error"``;
* peak memory; the graphs compiled for the plan, and after its first generation (goal: none).

usage: python bench/real_scale.py [flux|wan|all] [--compile regional|whole]
                                  [--mode default|max-autotune-no-cudagraphs|reduce-overhead]
       python bench/real_scale.py --tiny     # a smoke run on CPU with tiny configs: no figure of value

Not part of CI. Without a CUDA device (and without ``--tiny``) it exits with a one-line message.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import _root  # noqa: F401  (tests.fixtures, for --tiny)
import torch

import budcache
from budcache.plan import CachePlan, uniform_mask


@dataclass
class Case:
    """One model at one setting: its pipeline, a call that generates latents, K, B."""

    name: str
    pipe: Any
    run: Callable[[], Any]
    steps: int
    budget: int
    prompt: Callable[[int], dict]  # prompt i's embeddings (random, reproducible)
    call: dict  # the other call arguments (size, guidance)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def best_of(run: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - start)
    return min(times)


class CallTimer:
    """Times every call of some modules in call order, synchronised (only in dedicated timing runs)."""

    def __init__(self, modules: list[torch.nn.Module]):
        self.times: list[float] = []
        self._start = 0.0
        self.handles = [
            h
            for m in modules
            for h in (
                m.register_forward_pre_hook(lambda *a: self._begin()),
                m.register_forward_hook(lambda *a: self._end()),
            )
        ]

    def _begin(self) -> None:
        sync()
        self._start = time.perf_counter()

    def _end(self) -> None:
        sync()
        self.times.append(time.perf_counter() - self._start)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def step_times(case: Case) -> list[float]:
    """Seconds per step spent in the transformer(s) (every call of a step summed)."""
    timer = CallTimer(experts(case.pipe))
    case.run()
    timer.remove()
    per_step = len(timer.times) // case.steps
    return [sum(timer.times[i * per_step : (i + 1) * per_step]) for i in range(case.steps)]


def experts(pipe: Any) -> list[torch.nn.Module]:
    return [m for m in (pipe.transformer, getattr(pipe, "transformer_2", None)) if m is not None]


def plan_costs(case: Case, plan: CachePlan, full_step: float, full_s: float) -> dict:
    """Median computed and reused step of ``plan`` and the ideal speedup over ``full_s``."""
    per_step = step_times(case)
    computed = statistics.median(t for t, m in zip(per_step, plan.mask) if m)
    reused = statistics.median(t for t, m in zip(per_step, plan.mask) if not m)
    ideal = full_s / (full_s - (case.steps - case.budget) * (full_step - reused))
    return {"computed_step_ms": computed * 1e3, "reused_step_ms": reused * 1e3, "ideal_speedup": ideal}


@contextlib.contextmanager
def sync_debug(modules: list[torch.nn.Module] | None, mode: str) -> Iterator[list]:
    """``torch.cuda.set_sync_debug_mode(mode)`` inside the calls of ``modules`` (None: around the
    whole block); yields the synchronisation warnings recorded."""
    handles = []
    on = lambda *a: torch.cuda.set_sync_debug_mode(mode)  # noqa: E731
    off = lambda *a: torch.cuda.set_sync_debug_mode(0)  # noqa: E731
    for m in modules or []:
        handles += [m.register_forward_pre_hook(on), m.register_forward_hook(off)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if modules is None:
            on()
        try:
            yield caught
        finally:
            off()
            for h in handles:
                h.remove()


def syncs(case: Case, label: str) -> dict:
    """Synchronisations per generation (whole call) and per step (inside the transformer calls)."""
    if not torch.cuda.is_available():
        return {f"{label}_syncs": "not measurable without CUDA"}
    count = lambda caught: sum("synchroniz" in str(w.message) for w in caught)  # noqa: E731
    with sync_debug(None, "warn") as caught:
        case.run()
    out = {f"{label}_per_generation": count(caught)}
    with sync_debug(experts(case.pipe), "warn") as caught:
        case.run()
    out[f"{label}_per_step_in_transformer_calls"] = count(caught) / case.steps
    try:
        with sync_debug(experts(case.pipe), "error"):
            case.run()
        out[f"{label}_under_error_mode"] = "ok"
    except RuntimeError as e:
        out[f"{label}_under_error_mode"] = str(e).splitlines()[0][:200]
    return out


def peak(run: Callable[[], Any]) -> float | None:
    if not torch.cuda.is_available():
        return None
    torch.cuda.reset_peak_memory_stats()
    run()
    return torch.cuda.max_memory_allocated() / 2**30


def graphs() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def measure(case: Case, plan: CachePlan, repeats: int) -> dict:
    """Full, all-ones and plan runs of ``case`` as it is (eager or compiled), warmed up first."""
    K = case.steps
    ones = CachePlan(num_steps=K, budget=K, mask=[1] * K)
    before = graphs()
    start = time.perf_counter()
    case.run()
    first_s = time.perf_counter() - start
    case.run()
    full_s = best_of(case.run, repeats)
    full_step = statistics.median(step_times(case))
    out: dict[str, Any] = {"first_full_run_s": first_s, "graphs_full": graphs() - before}
    out.update(syncs(case, "full"))
    out["peak_gib_full"] = peak(case.run)
    with budcache.apply(case.pipe, ones):
        case.run()
        ones_s = best_of(case.run, repeats)
    with budcache.apply(case.pipe, plan) as handle:
        before = graphs()
        case.run()
        warm = graphs()
        case.run()
        plan_s = best_of(case.run, repeats)
        out.update(graphs_plan_first_generation=warm - before, graphs_plan_after_first_generation=graphs() - warm)
        out.update(plan_costs(case, plan, full_step, full_s))
        out.update(syncs(case, "plan"))
        out["peak_gib_plan"] = peak(case.run)
        out["summary"] = handle.summary()
    out.update(
        full_s=full_s,
        plan_s=plan_s,
        speedup=full_s / plan_s,
        full_step_ms=full_step * 1e3,
        all_ones_s=ones_s,
        hook_overhead_ms_per_step=(ones_s - full_s) / K * 1e3,
    )
    out["measured_over_ideal"] = out["speedup"] / out["ideal_speedup"]
    if "plan_per_step_in_transformer_calls" in out:
        out["syncs_added_per_step"] = (
            out["plan_per_step_in_transformer_calls"] - out["full_per_step_in_transformer_calls"]
        )
    return out


def compile_pipe(pipe: Any, how: str, mode: str, backend: str) -> None:
    options = {"fullgraph": True, "backend": backend, **({"mode": mode} if backend == "inductor" else {})}
    for name in ("transformer", "transformer_2"):
        module = getattr(pipe, name, None)
        if module is None:
            continue
        if how == "regional":
            module.compile_repeated_blocks(**options)
        else:
            setattr(pipe, name, torch.compile(module, **options))


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


FLUX_DEV = dict(
    patch_size=1,
    in_channels=64,
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    guidance_embeds=True,
    axes_dims_rope=[16, 56, 56],
)  # FluxTransformer2DModel of FLUX.1-dev (published config)


def flux(device: torch.device, dtype: torch.dtype, tiny: bool) -> Case:
    from diffusers import AutoencoderKL, FluxTransformer2DModel

    from tests.fixtures.tiny import bare_flux_pipeline, tiny_flux_pipeline

    if tiny:
        pipe = tiny_flux_pipeline()
        shapes, size, K, B, name = ((1, 8, 32), (1, 32)), 8, 8, 3, "tiny FluxPipeline (CPU smoke run)"
    else:
        torch.manual_seed(0)
        with torch.device(device), default_dtype(dtype):
            transformer = FluxTransformer2DModel(**FLUX_DEV).eval().requires_grad_(False)
            vae = AutoencoderKL(  # tiny, with FLUX's 16 latent channels and 8x downsampling; never run
                latent_channels=16,
                block_out_channels=(32,) * 4,
                down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4,
                layers_per_block=1,
                norm_num_groups=32,
            )
        pipe = bare_flux_pipeline(transformer, vae)
        shapes, size, K, B, name = (
            ((1, 512, 4096), (1, 768)),
            1024,
            28,
            10,
            "FLUX.1-dev architecture, random bf16, 1024x1024, guidance 3.5",
        )
    pipe.set_progress_bar_config(disable=True)

    def prompt(i: int) -> dict:
        gen = torch.Generator(device).manual_seed(100 + i)
        text, pooled = (torch.randn(*s, device=device, dtype=dtype, generator=gen) * 0.5 for s in shapes)
        return dict(prompt_embeds=text, pooled_prompt_embeds=pooled)

    call, embeds = dict(height=size, width=size, guidance_scale=3.5), prompt(0)

    def run():
        return pipe(
            **embeds,
            **call,
            num_inference_steps=K,
            generator=torch.Generator(device).manual_seed(0),
            output_type="latent",
        ).images

    return Case(name, pipe, run, K, B, prompt, call)


def wan(device: torch.device, dtype: torch.dtype, tiny: bool, frames: int = 33) -> Case:
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel

    if tiny:
        from tests.fixtures.tiny import tiny_wan_pipeline

        pipe = tiny_wan_pipeline()
        shape, height, width, frames, K, B, name = (1, 8, 32), 16, 16, 5, 8, 3, "tiny WanPipeline, CFG (CPU smoke run)"
    else:
        torch.manual_seed(0)
        with torch.device(device), default_dtype(dtype):
            transformer = (
                WanTransformer3DModel(  # Wan2.1-T2V-1.3B
                    patch_size=(1, 2, 2),
                    num_attention_heads=12,
                    attention_head_dim=128,
                    in_channels=16,
                    out_channels=16,
                    text_dim=4096,
                    freq_dim=256,
                    ffn_dim=8960,
                    num_layers=30,
                    cross_attn_norm=True,
                    qk_norm="rms_norm_across_heads",
                    eps=1e-6,
                    rope_max_seq_len=1024,
                )
                .eval()
                .requires_grad_(False)
            )
            vae = AutoencoderKLWan(
                base_dim=3,
                z_dim=16,
                dim_mult=[1, 1, 1, 1],
                num_res_blocks=1,  # tiny; never run
                temperal_downsample=[False, True, True],
            )
        scheduler = UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=3.0
        )
        pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer, scheduler=scheduler)
        shape, height, width, K, B = (1, 512, 4096), 480, 832, 50, 20
        name = f"Wan2.1-T2V-1.3B architecture, random bf16, 480x832x{frames}, CFG 5"
    pipe.set_progress_bar_config(disable=True)

    def prompt(i: int) -> dict:
        gen = torch.Generator(device).manual_seed(1 + i)
        text, negative = (torch.randn(*shape, device=device, dtype=dtype, generator=gen) * 0.5 for _ in range(2))
        return dict(prompt_embeds=text, negative_prompt_embeds=negative)

    call, embeds = dict(height=height, width=width, num_frames=frames, guidance_scale=5.0), prompt(0)

    def run():
        return pipe(
            **embeds,
            **call,
            num_inference_steps=K,
            generator=torch.Generator(device).manual_seed(0),
            output_type="latent",
        ).frames

    return Case(name, pipe, run, K, B, prompt, call)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", choices=("flux", "wan", "all"), default="all")
    p.add_argument(
        "--compile",
        dest="how",
        choices=("regional", "whole"),
        default="regional",
        help="compile_repeated_blocks(fullgraph=True), or torch.compile(transformer, fullgraph=True)",
    )
    p.add_argument("--mode", choices=("default", "max-autotune-no-cudagraphs", "reduce-overhead"), default="default")
    p.add_argument("--backend", default=None, help="torch.compile backend (default: inductor; aot_eager with --tiny)")
    p.add_argument("--reuse", choices=("residual", "output"), default="residual")
    p.add_argument("--rule", choices=("repeat", "extrapolate", "extrapolate2"), default="repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tiny", action="store_true", help="CPU smoke run on tiny configs (checks the harness only)")
    a = p.parse_args()
    if not a.tiny and not torch.cuda.is_available():
        sys.exit("bench/real_scale.py needs a CUDA GPU (none found); use --tiny for a CPU smoke run of the harness")
    device = torch.device("cpu" if a.tiny else "cuda")
    dtype = torch.float32 if a.tiny else torch.bfloat16
    backend = a.backend or ("aot_eager" if a.tiny else "inductor")
    for build in {"flux": (flux,), "wan": (wan,), "all": (flux, wan)}[a.model]:
        torch._dynamo.reset()
        case = build(device, dtype, a.tiny)
        plan = CachePlan(
            num_steps=case.steps,
            budget=case.budget,
            mask=uniform_mask(case.steps, case.budget),
            reuse=a.reuse,
            rule=a.rule,
        )
        with torch.no_grad():
            eager = measure(case, plan, a.repeats)
            start = time.perf_counter()
            compile_pipe(case.pipe, a.how, a.mode, backend)
            compiled = measure(case, plan, a.repeats)
        compiled["compile_and_first_full_run_s"] = compiled.pop("first_full_run_s")
        compiled["measure_s"] = time.perf_counter() - start
        compiled["speedup_over_eager_full"] = eager["full_s"] / compiled["plan_s"]
        compiled["full_speedup_over_eager_full"] = eager["full_s"] / compiled["full_s"]
        print(
            json.dumps(
                {
                    "model": case.name,
                    "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                    "torch": torch.__version__,
                    "steps": case.steps,
                    "budget": case.budget,
                    "plan": {"reuse": a.reuse, "rule": a.rule, "mask": "".join(map(str, plan.mask))},
                    "compile": {"how": a.how, "mode": a.mode, "backend": backend, "fullgraph": True},
                    "eager": eager,
                    "compiled": compiled,
                    "goal_compiled_measured_over_ideal_ge_0.95": compiled["measured_over_ideal"] >= 0.95,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
