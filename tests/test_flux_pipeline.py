"""The README's recipe for applying a plan to a diffusers FluxPipeline (built offline, tiny config)."""

import pytest
import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline

from budcache import CachePlan, plan_callback, stack_hooks
from budcache.plan import PlanError, uniform_mask


@pytest.fixture
def pipe(tiny_flux):
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(4,), latent_channels=1, norm_num_groups=1, use_quant_conv=False,
                        use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035,
                        sample_size=32).eval()
    return FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None, tokenizer=None,
                        text_encoder_2=None, tokenizer_2=None, transformer=tiny_flux.transformer)


def run(pipe, steps, callback=None):
    gen = torch.Generator().manual_seed(0)
    return pipe(prompt_embeds=torch.ones(1, 8, 32), pooled_prompt_embeds=torch.ones(1, 32), height=8, width=8,
                num_inference_steps=steps, generator=gen, output_type="pt", callback_on_step_end=callback).images


@torch.no_grad()
def test_readme_recipe_on_flux_pipeline(pipe):
    reference = run(pipe, 8)
    plan = CachePlan(num_steps=8, budget=3, mask=uniform_mask(8, 3), reuse="residual")
    plan.check_model(pipe.transformer)
    with stack_hooks(pipe.transformer) as stack:
        cached = run(pipe, plan.num_steps, plan_callback(plan, stack))
        assert stack.executions == 3
        stack.executions = 0
        full = run(pipe, 8, plan_callback(CachePlan(num_steps=8, budget=8, mask=[1] * 8), stack))
        assert stack.executions == 8
    assert torch.equal(full, reference)
    assert torch.equal(run(pipe, 8), reference)  # hooks removed: bit-identical again
    assert not torch.equal(cached, reference)
    assert float((cached - reference).abs().mean()) < 0.1


@torch.no_grad()
def test_extrapolating_plan_on_flux_pipeline(pipe):
    mask = [1, 1, 0, 0, 1, 0, 1, 0]
    repeat = CachePlan(num_steps=8, budget=4, mask=mask)
    extra = CachePlan(num_steps=8, budget=4, mask=mask, rule="extrapolate")
    with stack_hooks(pipe.transformer) as stack:
        a = run(pipe, 8, plan_callback(repeat, stack))
        b = run(pipe, 8, plan_callback(extra, stack))
        assert stack.executions == 8
        b_again = run(pipe, 8, plan_callback(extra, stack))  # no stale state between calls
        with pytest.raises(PlanError, match="searched for 8 steps"):
            run(pipe, 6, plan_callback(extra, stack))
        stack.reset()
    assert torch.equal(b, b_again)
    assert not torch.equal(a, b)
