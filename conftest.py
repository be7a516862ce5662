"""Every ```python block of README.md and docs/*.md runs as a test (Sybil).

Each document's examples share one namespace, set up here offline from the tiny fixtures of ``tests/fixtures``:
``pipe`` is a tiny random ``FluxPipeline`` with text encoders (it takes text prompts; examples run it at 16x16 with
a few steps), ``img2img_pipe`` / ``inpaint_pipe`` its image-to-image and inpainting siblings with an ``image`` and a
``mask``, and ``transformer`` / ``conditioning`` / ``noise`` a bare tiny FLUX transformer with fixed inputs. Examples
run in a temporary folder, so the files they write go nowhere. Blocks that need real weights or a GPU carry a
``<!-- skip: next "reason" -->`` comment.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from functools import cache
from pathlib import Path

import torch
from sybil import Sybil
from sybil.parsers.markdown import PythonCodeBlockParser, SkipParser

torch.set_num_threads(1)  # tiny models gain nothing from threads; results independent of the core count

PROMPTS = ["a red square", "a fox in the snow", "a city at night"]
VALIDATION_PROMPTS = ["a blue circle", "a lighthouse"]


@cache
def _tiny_flux_folder() -> Path:
    """The tiny text-to-image FluxPipeline, saved once per test run."""
    from tests.fixtures.tiny_text import save_tiny_flux_pipeline

    return save_tiny_flux_pipeline(Path(tempfile.mkdtemp(prefix="budcache-docs-")) / "tiny-flux")


def _load_pipe():
    from diffusers import DiffusionPipeline

    from tests.fixtures.tiny_text import quiet

    with quiet():
        pipe = DiffusionPipeline.from_pretrained(_tiny_flux_folder())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _sibling(cls, pipe):
    sibling = cls(**pipe.components)
    sibling.set_progress_bar_config(disable=True)
    return sibling


def _bare_transformer() -> dict:
    """A tiny FLUX transformer with fixed conditioning and noise for 3 samples (16 tokens of 4 channels)."""
    from tests.fixtures.tiny import tiny_flux_transformer

    gen = torch.Generator().manual_seed(1)
    conditioning = dict(
        encoder_hidden_states=torch.randn(3, 8, 32, generator=gen),
        pooled_projections=torch.randn(3, 32, generator=gen),
        img_ids=torch.randn(16, 3, generator=gen),
        txt_ids=torch.zeros(8, 3),
    )
    return dict(
        transformer=tiny_flux_transformer(0), conditioning=conditioning, noise=torch.randn(3, 16, 4, generator=gen)
    )


def setup(namespace: dict) -> None:
    from diffusers import FluxImg2ImgPipeline, FluxInpaintPipeline
    from PIL import Image

    namespace["_cwd"] = os.getcwd()
    namespace["_tmp"] = tempfile.mkdtemp(prefix="budcache-example-")
    os.chdir(namespace["_tmp"])
    torch.manual_seed(0)
    pipe = _load_pipe()
    mask = Image.new("L", (16, 16), 0)
    mask.paste(255, (8, 0, 16, 16))  # inpaint the right half
    namespace.update(
        torch=torch,
        pipe=pipe,
        img2img_pipe=_sibling(FluxImg2ImgPipeline, pipe),
        inpaint_pipe=_sibling(FluxInpaintPipeline, pipe),
        image=Image.new("RGB", (16, 16), (200, 40, 40)),
        mask=mask,
        prompts=list(PROMPTS),
        validation_prompts=list(VALIDATION_PROMPTS),
        prompt="a fox in the snow",
        **_bare_transformer(),
    )


def teardown(namespace: dict) -> None:
    os.chdir(namespace["_cwd"])
    shutil.rmtree(namespace["_tmp"], ignore_errors=True)


pytest_collect_file = Sybil(
    parsers=[PythonCodeBlockParser(), SkipParser()],
    patterns=["README.md", "docs/*.md"],
    setup=setup,
    teardown=teardown,
).pytest()
