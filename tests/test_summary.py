"""``handle.summary()`` reports the generation that ran last, marked interrupted when it did not finish."""

import pytest
import torch

import budcache
from budcache.plan import CachePlan, model_identity
from tests.fixtures.tiny import tiny_flux_pipeline

K = 6
MASK = [1, 0, 1, 0, 1, 0]


def generate(pipe, callback=None):
    return pipe(
        prompt_embeds=torch.ones(1, 8, 32),
        pooled_prompt_embeds=torch.ones(1, 32),
        height=8,
        width=8,
        num_inference_steps=K,
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
        callback_on_step_end=callback,
    )


def stop_at(step, how):
    def callback(pipe, i, t, kwargs):
        if i == step:
            if how == "raise":
                raise RuntimeError("stopped by the callback")
            pipe._interrupt = True
        return kwargs

    return callback


@torch.no_grad()
@pytest.mark.parametrize("how", ["raise", "interrupt"])
def test_an_interrupted_generation_is_reported_as_far_as_it_ran(tiny_flux, how):
    pipe = tiny_flux_pipeline(tiny_flux.transformer)
    pipe.set_progress_bar_config(disable=True)
    plan = CachePlan(num_steps=K, budget=3, mask=MASK, model=model_identity(pipe.transformer))
    with budcache.apply(pipe, plan) as handle:
        for first in (True, False):  # the first generation, and one after a finished one
            if not first:
                generate(pipe)
                assert handle.summary() == {"cond": {"computed": 3, "reused": 3}}
            try:
                generate(pipe, stop_at(2, how))  # steps 0, 1, 2 ran
            except RuntimeError:
                assert how == "raise"
            assert handle.summary() == {"cond": {"computed": 2, "reused": 1, "interrupted": True}}
        generate(pipe)
        assert handle.summary() == {"cond": {"computed": 3, "reused": 3}}


@torch.no_grad()
def test_a_bare_transformer_interrupted_then_run_again_counts_afresh(tiny_flux):
    sigmas = torch.linspace(1, 0, K + 1).tolist()

    def generate_bare(steps):
        x = tiny_flux.noise
        for i in range(steps):
            x = x + (sigmas[i + 1] - sigmas[i]) * tiny_flux.velocity(x, sigmas[i])

    with budcache.apply(tiny_flux.transformer, CachePlan(num_steps=K, budget=3, mask=MASK)) as handle:
        generate_bare(4)
        assert handle.summary() == {"default": {"computed": 2, "reused": 2, "interrupted": True}}
        generate_bare(K)
        assert handle.summary() == {"default": {"computed": 3, "reused": 3}}
