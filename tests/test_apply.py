"""``budcache.apply`` on a tiny offline FluxPipeline."""

import pytest
import torch

import budcache
from budcache.plan import CachePlan, PlanError, model_identity, uniform_mask
from tests.fixtures.tiny import tiny_flux_pipeline, tiny_wan_pipeline


@pytest.fixture
def pipe(tiny_flux):
    return tiny_flux_pipeline(tiny_flux.transformer)


def run(pipe, steps, n=1, **kw):
    return pipe(
        prompt_embeds=torch.ones(1, 8, 32),
        pooled_prompt_embeds=torch.ones(1, 32),
        height=8,
        width=8,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
        num_images_per_prompt=n,
        **kw,
    ).images


def attention_calls(transformer):
    calls = []
    hooks = [b.attn.register_forward_hook(lambda *a: calls.append(1)) for b in transformer.single_transformer_blocks]
    return calls, hooks


@torch.no_grad()
@pytest.mark.parametrize("reuse, rule", [("residual", "repeat"), ("residual", "extrapolate"), ("output", "repeat")])
def test_apply_runs_exactly_budget_and_removes_cleanly(pipe, reuse, rule):
    reference = run(pipe, 8)
    plan = CachePlan(
        num_steps=8, budget=3, mask=uniform_mask(8, 3), reuse=reuse, rule=rule, model=model_identity(pipe.transformer)
    )
    calls, hooks = attention_calls(pipe.transformer)
    with budcache.apply(pipe, plan) as handle:
        cached = run(pipe, 8)
        assert len(calls) == 3
        assert handle.summary() == {"cond": {"computed": 3, "reused": 5}}
        assert torch.equal(run(pipe, 8), cached)  # repeated calls: no stale cache
    for h in hooks:
        h.remove()
    assert not torch.equal(cached, reference)
    assert torch.equal(run(pipe, 8), reference)  # remove() restores bit for bit


@torch.no_grad()
def test_all_ones_plan_is_bit_identical(pipe):
    reference = run(pipe, 6)
    with budcache.apply(pipe, CachePlan(num_steps=6, budget=6, mask=[1] * 6)):
        assert torch.equal(run(pipe, 6), reference)


@torch.no_grad()
def test_interrupted_call_and_batch_change_never_reuse_stale_cache(pipe):
    plan = CachePlan(num_steps=8, budget=4, mask=[1, 0, 1, 0, 1, 0, 1, 0], rule="extrapolate")
    with budcache.apply(pipe, plan):
        clean = run(pipe, 8)

        def stop(pipe, i, t, kw):
            if i == 4:
                raise KeyboardInterrupt
            return {}

        with pytest.raises(KeyboardInterrupt):
            run(pipe, 8, callback_on_step_end=stop)
        assert torch.equal(run(pipe, 8), clean)
        two = run(pipe, 8, n=2)
        assert two.shape[0] == 2 and torch.allclose(two[0], clean[0], atol=1e-5)


@torch.no_grad()
def test_wrong_step_count_and_wrong_model_are_refused(pipe):
    plan = CachePlan(num_steps=8, budget=3, mask=uniform_mask(8, 3))
    with budcache.apply(pipe, plan):
        with pytest.raises(PlanError, match="searched for 8 steps"):
            run(pipe, 6)
        with pytest.raises(RuntimeError, match="already applied"):
            budcache.apply(pipe, plan)
    other = CachePlan(
        num_steps=8, budget=3, mask=uniform_mask(8, 3), model={"class": "WanTransformer3DModel", "fingerprint": "0"}
    )
    with pytest.raises(PlanError, match="WanTransformer3DModel"):
        budcache.apply(pipe, other)


@torch.no_grad()
def test_plan_sigmas_reach_the_transformer_unchanged(pipe):
    sigmas = [1.0, 0.9, 0.7, 0.45, 0.3, 0.15, 0.0]
    seen = []
    hook = pipe.transformer.register_forward_pre_hook(
        lambda m, a, kw: seen.append(float(kw["timestep"][0])), with_kwargs=True
    )
    try:
        with budcache.apply(pipe, CachePlan(num_steps=6, budget=6, mask=[1] * 6, sigmas=sigmas)):
            run(pipe, 6)
            with pytest.raises(PlanError, match="searched for 6 steps"):
                run(pipe, 9)
        assert seen == pytest.approx(sigmas[:-1], abs=1e-6)
        seen.clear()
        run(pipe, 6)  # removed: the scheduler's own (shifted) schedule again
        assert seen != pytest.approx(sigmas[:-1], abs=1e-6)
    finally:
        hook.remove()


@torch.no_grad()
def test_wan_cfg_branches_each_follow_the_mask_with_their_own_cache():
    pipe = tiny_wan_pipeline()
    transformer = pipe.transformer
    seen = []
    hook = transformer.register_forward_pre_hook(
        lambda m, a, kw: seen.append(float(kw["timestep"][0])), with_kwargs=True
    )

    def run():
        return pipe(
            prompt_embeds=torch.ones(1, 8, 32),
            negative_prompt_embeds=torch.zeros(1, 8, 32),
            height=16,
            width=16,
            num_frames=5,
            num_inference_steps=6,
            guidance_scale=5.0,
            generator=torch.Generator().manual_seed(0),
            output_type="pt",
        ).frames

    reference = run()
    calls = []
    counter = transformer.blocks[-1].attn1.register_forward_hook(lambda *a: calls.append(1))
    sigmas = [1.0, 0.95, 0.85, 0.7, 0.5, 0.25, 0.0]
    plan = CachePlan(num_steps=6, budget=3, mask=uniform_mask(6, 3), rule="extrapolate", sigmas=sigmas)
    seen.clear()
    with budcache.apply(pipe, plan) as handle:
        cached = run()
        assert len(calls) == 6  # 3 computed steps x 2 CFG branches
        assert handle.summary() == {"cond": {"computed": 3, "reused": 3}, "uncond": {"computed": 3, "reused": 3}}
    assert seen == pytest.approx(
        [1000 * s for s in sigmas[:-1] for _ in (0, 1)], abs=1e-3
    )  # WanPipeline takes no sigmas=
    counter.remove()
    hook.remove()
    assert cached.shape == reference.shape
    assert torch.equal(run(), reference)


@torch.no_grad()
def test_sd3_without_cache_context_batched_cfg():
    """SD3 sets no cache context and batches cond/uncond in one call: one 'default' branch."""
    from tests.fixtures.tiny import tiny_sd3_pipeline

    pipe = tiny_sd3_pipeline()

    def run():
        return pipe(
            prompt_embeds=torch.ones(1, 8, 32),
            pooled_prompt_embeds=torch.ones(1, 64),
            negative_prompt_embeds=torch.zeros(1, 8, 32),
            negative_pooled_prompt_embeds=torch.zeros(1, 64),
            height=8,
            width=8,
            num_inference_steps=6,
            guidance_scale=3.0,
            generator=torch.Generator().manual_seed(0),
            output_type="pt",
        ).images

    reference = run()
    calls = []
    counter = pipe.transformer.transformer_blocks[-1].attn.register_forward_hook(lambda *a: calls.append(1))
    with budcache.apply(pipe, CachePlan(num_steps=6, budget=3, mask=uniform_mask(6, 3), rule="extrapolate")) as h:
        cached = run()
        assert len(calls) == 3
        assert h.summary() == {"default": {"computed": 3, "reused": 3}}
    counter.remove()
    assert not torch.equal(cached, reference)
    assert torch.equal(run(), reference)


@torch.no_grad()
def test_bare_z_image_transformer_with_increasing_timesteps():
    """Z-Image's timestep grows (1 - sigma) and its inputs are lists; a bare transformer counts calls."""
    from diffusers import ZImageTransformer2DModel

    torch.manual_seed(0)
    model = ZImageTransformer2DModel(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=16,
        dim=16,
        n_layers=2,
        n_refiner_layers=1,
        n_heads=1,
        n_kv_heads=2,
        qk_norm=True,
        cap_feat_dim=16,
        rope_theta=256.0,
        t_scale=1000.0,
        axes_dims=[8, 4, 4],
        axes_lens=[256, 32, 32],
    ).eval()
    cap = [torch.randn(16, 16)]
    sigmas = torch.linspace(1, 0, 7).tolist()

    def run(stop_at=None):
        x = torch.randn(16, 1, 16, 16, generator=torch.Generator().manual_seed(0))
        for i in range(6):
            if i == stop_at:
                return None
            v = model([x], torch.tensor([1 - sigmas[i]]), cap, return_dict=False)[0][0]
            x = x + (sigmas[i + 1] - sigmas[i]) * -v
        return x

    reference = run()
    calls = []
    counter = model.layers[-1].attention.register_forward_hook(lambda *a: calls.append(1))
    plan = CachePlan(num_steps=6, budget=3, mask=[1, 1, 0, 1, 0, 0], rule="extrapolate")
    with budcache.apply(model, plan) as handle:
        cached = run()
        assert len(calls) == 3 and handle.summary() == {"default": {"computed": 3, "reused": 3}}
        run(stop_at=4)  # interrupted
        assert torch.equal(run(), cached)
    counter.remove()
    assert not torch.equal(cached, reference)
    assert torch.equal(run(), reference)


@torch.no_grad()
def test_bare_qwen_image_transformer():
    from diffusers import QwenImageTransformer2DModel

    torch.manual_seed(0)
    model = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=16,
        out_channels=4,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=16,
        axes_dims_rope=(8, 4, 4),
    ).eval()
    gen = torch.Generator().manual_seed(1)
    text, noise = torch.randn(1, 7, 16, generator=gen), torch.randn(1, 16, 16, generator=gen)
    sigmas = torch.linspace(1, 0, 7).tolist()

    def run():
        x = noise
        for i in range(6):
            v = model(
                hidden_states=x,
                encoder_hidden_states=text,
                encoder_hidden_states_mask=torch.ones(1, 7),
                timestep=torch.tensor([sigmas[i]]),
                img_shapes=[(1, 4, 4)],
                return_dict=False,
            )[0]
            x = x + (sigmas[i + 1] - sigmas[i]) * v
        return x

    reference = run()
    calls = []
    counter = model.transformer_blocks[-1].attn.register_forward_hook(lambda *a: calls.append(1))
    with budcache.apply(model, CachePlan(num_steps=6, budget=2, mask=[1, 0, 0, 1, 0, 0], rule="extrapolate")) as h:
        cached = run()
        assert len(calls) == 2 and h.summary() == {"default": {"computed": 2, "reused": 4}}
    counter.remove()
    assert not torch.equal(cached, reference)
    assert torch.equal(run(), reference)
