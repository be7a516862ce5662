"""Stage 2 on a FLUX pipeline: calibrate, search, align, apply, and what it costs.

CPU (default): the tiny FLUX test pipeline (diffusers' tiny config, 16x16, true CFG), a few prompts.
``--gpu``: the FLUX.1-dev architecture with random bf16 weights at ``--size`` (1024 default) on one
CUDA device; weights are random, so only time and memory mean anything, never the losses.

Prints one JSON object: validation loss before and after alignment, the loss of the aligned plan
applied inside the pipeline (it must equal the reported one), peak memory (CUDA allocator peak on
the GPU; resident-set peak of the process on the CPU), and seconds per stage.

``--estimate``: no run; alignment's memory at FLUX.1-dev scale estimated on the CPU (weights + the
activations autograd saves in one transformer call, measured at full width with 1-2 blocks).

usage: python bench/align_pipeline.py [--gpu | --estimate] [--prompts 8] [--steps 28] [--budget 10] [--epochs 20]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
import time

import _root  # noqa: F401  (repository root on sys.path: tests.fixtures)
import torch
from real_scale import FLUX_DEV

import budcache
from budcache.align import AlignConfig
from budcache.plan import model_identity, uniform_mask


def tiny_flux():
    from tests.fixtures.tiny import tiny_flux_pipeline

    def prompt(i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        return dict(
            prompt_embeds=torch.randn(1, 8, 32, generator=g),
            pooled_prompt_embeds=torch.randn(1, 32, generator=g),
            negative_prompt_embeds=torch.randn(1, 8, 32, generator=g),
            negative_pooled_prompt_embeds=torch.randn(1, 32, generator=g),
        )

    return tiny_flux_pipeline(), prompt, dict(height=16, width=16, true_cfg_scale=3.0)


def flux_transformer(**overrides):
    from diffusers import FluxTransformer2DModel
    from diffusers.utils import logging

    logging.set_verbosity_error()  # the cast to bf16 warns about float32 modules FLUX does not have
    return FluxTransformer2DModel(**{**FLUX_DEV, **overrides}).to(torch.bfloat16).eval().requires_grad_(False)


def flux_dev(size: int, device: str = "cuda", **blocks):
    """FLUX.1-dev's architecture, random bf16 weights, on ``device`` (guidance-distilled: one call per step);
    ``blocks``: fewer layers for a smoke run."""
    from diffusers import AutoencoderKL

    from tests.fixtures.tiny import bare_flux_pipeline

    torch.manual_seed(0)
    with torch.device(device):
        tr = flux_transformer(**blocks)
        vae = (
            AutoencoderKL(
                in_channels=3,
                out_channels=3,
                latent_channels=16,
                block_out_channels=(128, 256, 512, 512),
                down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4,
                layers_per_block=2,
                norm_num_groups=32,
                use_quant_conv=False,
                use_post_quant_conv=False,
                shift_factor=0.1159,
                scaling_factor=0.3611,
            )
            .to(torch.bfloat16)
            .eval()
        )
    pipe = bare_flux_pipeline(tr, vae)
    pipe.set_progress_bar_config(disable=True)

    def prompt(i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        return dict(
            prompt_embeds=torch.randn(1, 512, 4096, generator=g).to(device, torch.bfloat16),
            pooled_prompt_embeds=torch.randn(1, 768, generator=g).to(device, torch.bfloat16),
        )

    return pipe, prompt, dict(height=size, width=size, guidance_scale=3.5)


def saved_bytes(size: int, double: int, single: int) -> int:
    """Bytes autograd keeps for backward in one call (at ``size`` x ``size``, 512 text tokens, bf16, on this
    CPU) of a FLUX.1-dev-width transformer with ``double`` + ``single`` blocks, the weights excluded: what
    alignment's backward holds for the call it recomputes. Counted exactly with saved-tensor hooks; the
    CPU's SDPA (flash attention for CPU) keeps q, k, v, the output and the log-sum-exp, as on a GPU."""
    torch.manual_seed(0)
    tr = flux_transformer(num_layers=double, num_single_layers=single)
    weights = {p.untyped_storage().data_ptr() for p in tr.parameters()}
    n_img, n_txt = (size // 16) ** 2, 512
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in weights:
            kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        tr(
            hidden_states=torch.randn(1, n_img, 64, dtype=torch.bfloat16, requires_grad=True),
            encoder_hidden_states=torch.randn(1, n_txt, 4096, dtype=torch.bfloat16),
            pooled_projections=torch.randn(1, 768, dtype=torch.bfloat16),
            timestep=torch.full((1,), 0.5, dtype=torch.bfloat16, requires_grad=True),
            guidance=torch.full((1,), 3.5),
            img_ids=torch.zeros(n_img, 3),
            txt_ids=torch.zeros(n_txt, 3),
            return_dict=False,
        )
    return sum(kept.values())


def estimate(size: int) -> dict:
    """Alignment's memory at FLUX.1-dev scale, estimated on the CPU: the bf16 weights (counted on the meta
    device) plus the saved activations of one transformer call, measured with 1-2 blocks of each kind at
    full width and extrapolated linearly to 19 + 38 blocks. Checkpointing per step and one prompt per
    batch mean backward holds one call's activations at a time; the steps' inputs (one latent each) and
    the captures (512x4096 text embeddings per prompt) add a few MB per prompt."""
    with torch.device("meta"):
        weights = sum(p.numel() * p.element_size() for p in flux_transformer().parameters())
    start = time.perf_counter()
    base, two_double, two_single = (saved_bytes(size, 1, 1), saved_bytes(size, 2, 1), saved_bytes(size, 1, 2))
    double, single = two_double - base, two_single - base
    saved = base + (FLUX_DEV["num_layers"] - 1) * double + (FLUX_DEV["num_single_layers"] - 1) * single
    gib = 2**30
    return {
        "estimate": "CPU, saved tensors extrapolated; not a GPU measurement",
        "size": size,
        "weights_gib": round(weights / gib, 2),
        "saved_per_double_block_mib": round(double / 2**20, 1),
        "saved_per_single_block_mib": round(single / 2**20, 1),
        "saved_one_call_gib": round(saved / gib, 2),
        "weights_plus_saved_gib": round((weights + saved) / gib, 2),
        "seconds": round(time.perf_counter() - start, 1),
    }


def peak_mb(gpu: bool) -> float:
    if gpu:
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpu", action="store_true", help="FLUX.1-dev architecture (random bf16 weights) on CUDA")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="with --gpu: the same run on the CPU with 1 + 1 blocks (checks the code path, no figures)",
    )
    p.add_argument(
        "--estimate",
        action="store_true",
        help="no run: estimate alignment's memory at FLUX.1-dev scale from saved tensors on the CPU",
    )
    p.add_argument("--size", type=int, default=1024, help="image side with --gpu or --estimate (default 1024)")
    p.add_argument("--prompts", type=int, default=None, help="calibration prompts (default 4 CPU, 8 GPU)")
    p.add_argument("--validation", type=int, default=2, help="validation prompts (default 2)")
    p.add_argument("--steps", type=int, default=None, help="K (default 12 CPU, 28 GPU)")
    p.add_argument("--budget", type=int, default=None, help="B (default K/3)")
    p.add_argument("--epochs", type=int, default=None, help="alignment epochs (default 20 CPU, 3 GPU)")
    p.add_argument("--lr", type=float, default=0.001)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.estimate:
        print(json.dumps(estimate(a.size), indent=1))
        return
    if a.gpu and not a.smoke and not torch.cuda.is_available():
        sys.exit("bench/align_pipeline.py: --gpu needs a CUDA device, and torch sees none")
    n = a.prompts or (8 if a.gpu else 4)
    k = a.steps or (28 if a.gpu else 12)
    b = a.budget or max(2, k // 3)
    epochs = a.epochs or (3 if a.gpu else 20)
    cuda = a.gpu and not a.smoke
    if a.smoke:
        pipe, prompt, call = flux_dev(a.size, "cpu", num_layers=1, num_single_layers=1)
    else:
        pipe, prompt, call = flux_dev(a.size) if a.gpu else tiny_flux()
    times, out = (
        {},
        {
            "device": torch.cuda.get_device_name() if cuda else "cpu",
            "pipeline": type(pipe).__name__,
            "size": a.size if a.gpu else 16,
            "steps": k,
            "budget": b,
            "prompts": n,
            "validation_prompts": a.validation,
            "epochs": epochs,
        },
    )

    start = time.perf_counter()
    calib = budcache.calibrate(pipe, [prompt(i) for i in range(n)], k, progress=False, **call)
    validation = budcache.calibrate(
        pipe, [prompt(1000 + i) for i in range(a.validation)], k, seed=5000, progress=False, **call
    )
    times["calibrate"] = time.perf_counter() - start
    start = time.perf_counter()
    if a.gpu:  # random weights: the search's result means nothing; a uniform mask costs the same to align
        plan = budcache.CachePlan(
            num_steps=k, budget=b, mask=uniform_mask(k, b), sigmas=calib.sigmas, model=model_identity(pipe.transformer)
        )
    else:
        plan = budcache.search(
            calib,
            b,
            config=dataclasses.replace(budcache.search.EFFORTS["annealed"], iterations=60, starts=1, kicks=0),
            progress=False,
        )
    times["search"] = time.perf_counter() - start
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    aligned, result = budcache.align(plan, calib, validation, AlignConfig(epochs=epochs, lr=a.lr), progress=False)
    times["align"] = time.perf_counter() - start
    out["peak_mb_align"] = peak_mb(cuda)
    start = time.perf_counter()
    errors = []
    for i in range(a.validation):
        run = dict(**prompt(1000 + i), **call, num_inference_steps=k, output_type="latent")
        with budcache.apply(pipe, aligned):
            cached = pipe(**run, generator=torch.Generator(pipe._execution_device).manual_seed(5000 + i))[0]
        errors.append((cached.float() - validation.captures[i].final.float()).pow(2).mean().item())
    times["apply"] = time.perf_counter() - start
    before, after = result.validation_loss[0], result.validation_loss[result.best_epoch]
    out.update(
        loss_before=before,
        loss_after=after,
        loss_applied=sum(errors) / len(errors),
        best_epoch=result.best_epoch,
        train_loss=result.train_loss,
        seconds={name: round(t, 2) for name, t in times.items()},
        seconds_per_epoch=round(times["align"] / max(1, len(result.train_loss)), 2),
        peak_mb=peak_mb(cuda),
    )
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
