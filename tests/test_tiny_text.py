import pytest
import torch
from diffusers import DiffusionPipeline
from safetensors.torch import load_file

from tests.fixtures.tiny_text import (
    FluxPipeline,
    WanPipeline,
    quiet,
    save_tiny_flux_pipeline,
    save_tiny_wan_pipeline,
)

STEPS = 3


def _load(path) -> DiffusionPipeline:
    with quiet():
        pipe = DiffusionPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory):
    return save_tiny_flux_pipeline(tmp_path_factory.mktemp("flux"), seed=0)


@pytest.fixture(scope="module")
def flux(flux_dir) -> FluxPipeline:
    return _load(flux_dir)


@pytest.fixture(scope="module")
def wan(tmp_path_factory) -> WanPipeline:
    return _load(save_tiny_wan_pipeline(tmp_path_factory.mktemp("wan"), seed=0))


def _flux(pipe, prompt, seed=0, **kw):
    kw = dict(num_inference_steps=STEPS, height=16, width=16, output_type="latent", max_sequence_length=16) | kw
    return pipe(prompt, generator=torch.Generator().manual_seed(seed), **kw).images


def _wan(pipe, prompt, seed=0, **kw):
    kw = (
        dict(num_inference_steps=STEPS, height=16, width=16, num_frames=5, output_type="latent", max_sequence_length=16)
        | kw
    )
    return pipe(prompt, generator=torch.Generator().manual_seed(seed), **kw).frames


def _count_calls(module):
    calls = []
    handle = module.register_forward_pre_hook(lambda *_: calls.append(1))
    return calls, handle


def test_flux_loads_as_flux_with_text_components(flux):
    assert type(flux) is FluxPipeline
    assert flux.tokenizer.model_max_length == 77
    assert flux.text_encoder.config.hidden_size == flux.transformer.config.pooled_projection_dim
    assert flux.text_encoder_2.config.d_model == flux.transformer.config.joint_attention_dim


def test_flux_text_prompt_runs_and_is_finite(flux):
    calls, handle = _count_calls(flux.transformer)
    try:
        latents = _flux(flux, "a red square")
    finally:
        handle.remove()
    assert latents.shape == (1, 64, 4) and torch.isfinite(latents).all()
    assert len(calls) == STEPS


def test_flux_prompts_differ_and_seed_is_deterministic(flux):
    a, b = _flux(flux, "a red square"), _flux(flux, "a blue circle")
    assert not torch.allclose(a, b)
    assert torch.equal(a, _flux(flux, "a red square"))


def test_flux_default_lengths_and_pil_output(flux):
    images = _flux(flux, ["a red square", "x"], output_type="pil", max_sequence_length=512)
    assert len(images) == 2 and images[0].size == (16, 16)


def test_flux_true_cfg_calls_transformer_twice_per_step(flux):
    calls, handle = _count_calls(flux.transformer)
    try:
        latents = _flux(flux, "a red square", negative_prompt="blurry", true_cfg_scale=2.0)
    finally:
        handle.remove()
    assert torch.isfinite(latents).all() and len(calls) == 2 * STEPS
    assert not torch.allclose(latents, _flux(flux, "a red square"))


def test_flux_save_is_deterministic_in_seed(flux_dir, tmp_path):
    again, other = save_tiny_flux_pipeline(tmp_path / "a", seed=0), save_tiny_flux_pipeline(tmp_path / "b", seed=1)
    for sub, name in [("transformer", "diffusion_pytorch_model"), ("text_encoder_2", "model")]:
        ref = load_file(flux_dir / sub / f"{name}.safetensors")
        assert all(torch.equal(ref[k], v) for k, v in load_file(again / sub / f"{name}.safetensors").items())
        assert any(not torch.equal(ref[k], v) for k, v in load_file(other / sub / f"{name}.safetensors").items())


def test_wan_text_prompt(wan):
    assert type(wan) is WanPipeline
    calls, handle = _count_calls(wan.transformer)
    try:
        a = _wan(wan, "a red square")
    finally:
        handle.remove()
    assert a.shape == (1, 16, 2, 2, 2) and torch.isfinite(a).all()
    assert len(calls) == 2 * STEPS  # guidance_scale 5 > 1: conditional + unconditional
    assert not torch.allclose(a, _wan(wan, "a blue circle"))
    assert torch.equal(a, _wan(wan, "a red square"))
    video = _wan(wan, "a red square", output_type="np")
    assert video.shape == (1, 5, 16, 16, 3)
