"""Launching a command: the process group under ``torchrun``, pipeline loading, calibration, and the
model source a command runs on (``--model demo`` or ``--pipeline``), built the same way for all."""

from __future__ import annotations

import argparse
import atexit
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..calibration import calibrate, pipeline_source
from ..source import HELD_OUT_SEED_OFFSET, VALIDATION_SEED_OFFSET, Source
from .options import call_kwargs


def rank_and_world() -> tuple[int, int]:
    """(rank, world size): under ``torchrun`` the process group is set up here (NCCL on GPUs, else gloo)."""
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        # left to the interpreter's exit, gloo's threads may abort a rank that ends first (SIGABRT)
        atexit.register(dist.destroy_process_group)
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def load_pipeline(path: str, dtype: str | None, device: str | None, offload: bool):
    """A diffusers pipeline from a local folder or hub id, in ``dtype`` on ``device``."""
    import torch
    from diffusers import DiffusionPipeline

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, dtype or ("bfloat16" if device != "cpu" else "float32"))
    pipe = DiffusionPipeline.from_pretrained(path, dtype=dtype)
    if offload:
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    return pipe


def calibrate_shard(
    pipe: Any, prompts: list, steps: int, seed: int, rank: int = 0, world: int = 1, progress: bool = True, **kwargs: Any
):
    """This rank's share of ``prompts`` (prompt i keeps seed ``seed + i``)."""
    mine = range(rank, len(prompts), world)
    return calibrate(
        pipe, [prompts[i] for i in mine], steps, seeds=[seed + i for i in mine], progress=progress, **kwargs
    )


@contextmanager
def open_source(
    a: argparse.Namespace,
    *,
    held_out: bool = False,
    validation: bool = True,
    rank: int = 0,
    world: int = 1,
    reuse: str | None = None,
    steps: int | None = None,
) -> Iterator[Source]:
    """The model source of a command: the demo model, or the pipeline calibrated on ``--prompts``
    (validation: ``--validation-prompts`` at seed + 5000; held out: ``--held-out-prompts`` at seed
    + 10000; ``validation`` False: no validation set). Under ``torchrun`` each rank holds its share of
    the calibration and validation sets. ``steps``: K when not ``--steps`` (a plan's). The options
    were checked and the prompt files read by :func:`.checks.check_source`."""
    reuse, steps = reuse or a.reuse, steps or a.steps
    progress = not a.no_progress
    if a.pipeline is None:
        from ..demo.problem import demo_source

        count = getattr(a, "validation", None) if validation else 0
        with demo_source(
            steps,
            a.calib,
            count,
            a.held_out if held_out else 0,
            a.seed,
            reuse,
            shard=(rank, world),
            scheduler=a.scheduler,
        ) as source:
            yield source
        return
    device = a.device or (f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if world > 1 else None)
    pipe = load_pipeline(a.pipeline, a.dtype, device, a.cpu_offload)
    pipe.set_progress_bar_config(disable=True)
    kwargs, prompts = call_kwargs(a), a.prompt_lists
    if getattr(a, "sizes", None):
        kwargs["sizes"] = [tuple(s) for s in a.sizes]  # every prompt at every size
    calib = calibrate_shard(pipe, prompts["prompts"], steps, a.seed, rank, world, progress, **kwargs)
    checks = evaluation = None
    if validation and "validation_prompts" in prompts:
        checks = calibrate_shard(
            pipe, prompts["validation_prompts"], steps, a.seed + VALIDATION_SEED_OFFSET, rank, world, progress, **kwargs
        )
    if held_out:
        evaluation = calibrate_shard(
            pipe, prompts["held_out_prompts"], steps, a.seed + HELD_OUT_SEED_OFFSET, progress=progress, **kwargs
        )
    with pipeline_source(calib, reuse, validation=checks, held_out=evaluation) as source:
        yield source
