"""calibrate -> search -> apply on real diffusers pipelines (tiny random configs, CPU, no text encoders)."""

import pytest
import torch

import budcache
from budcache import families
from budcache.calibration import calibrate, replay
from budcache.search import SearchConfig
from tests.fixtures import tiny_families
from tests.fixtures.tiny import tiny_flux_pipeline, tiny_sd3_pipeline, tiny_wan_pipeline

QUICK = SearchConfig(strategy="classic", iterations=30, starts=1, kicks=0)
K, B = 10, 4


def _flux():
    def prompt():
        return dict(
            prompt_embeds=torch.randn(1, 8, 32),
            pooled_prompt_embeds=torch.randn(1, 32),
            negative_prompt_embeds=torch.randn(1, 8, 32),
            negative_pooled_prompt_embeds=torch.randn(1, 32),
        )

    return tiny_flux_pipeline(), prompt, dict(height=16, width=16, true_cfg_scale=3.0), ("cond", "uncond")


def _wan():
    def prompt():
        return dict(prompt_embeds=torch.randn(1, 8, 32), negative_prompt_embeds=torch.randn(1, 8, 32))

    return tiny_wan_pipeline(), prompt, dict(height=16, width=16, num_frames=5, guidance_scale=4.0), ("cond", "uncond")


def _sd3():
    def prompt():
        return dict(
            prompt_embeds=torch.randn(1, 8, 32),
            pooled_prompt_embeds=torch.randn(1, 64),
            negative_prompt_embeds=torch.randn(1, 8, 32),
            negative_pooled_prompt_embeds=torch.randn(1, 64),
        )

    return tiny_sd3_pipeline(), prompt, dict(height=16, width=16, guidance_scale=5.0), ("default",)


def _family(name, branches, **options):
    def build():
        family = tiny_families.FAMILIES[name]
        seeds = iter(range(100))

        def prompt():
            kwargs = family.call_kwargs(seed=next(seeds), **options)
            return {k: v for k, v in kwargs.items() if k not in ("generator", "output_type")}

        return family.pipeline(), prompt, {}, branches

    return build


FAMILIES = {
    "flux-true-cfg": _flux,
    "wan-cfg": _wan,
    "sd3-batched-cfg": _sd3,
    "z-image-list-cfg": _family("z_image", ("default",)),
    "qwen-image-true-cfg": _family("qwen_image", ("cond", "uncond")),
    "sana-batched-cfg": _family("sana", ("default",)),
}


SOLVERS = {"wan-cfg": "UniPCMultistep", "sana-batched-cfg": "DPMSolverMultistep"}  # the rest: FlowMatchEuler


def _run(pipe, prompt, kwargs, seed, steps=K):
    return pipe(
        **prompt,
        **kwargs,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(seed),
        output_type="latent",
    )[0]


def _setup(family):
    torch.manual_seed(0)
    pipe, make_prompt, kwargs, branches = FAMILIES[family]()
    prompts = [make_prompt() for _ in range(2)]
    return pipe, prompts, kwargs, branches


def _check_applied(pipe, prompts, kwargs, plan, branches):
    """Apply ``plan`` inside the pipeline: B computed per branch, and the MSE to full compute is the
    loss the search optimised."""
    errors = []
    for i, prompt in enumerate(prompts):
        full = _run(pipe, prompt, kwargs, i)
        with budcache.apply(pipe, plan) as handle:
            cached = _run(pipe, prompt, kwargs, i)
            assert handle.summary() == {b: {"computed": B, "reused": K - B} for b in branches}
            assert budcache.summary(pipe) == handle.summary()
        errors.append((cached - full).pow(2).mean().item())
    assert sum(errors) / len(errors) == pytest.approx(plan.record.objective, rel=1e-4)


@pytest.mark.parametrize("rule", ["repeat", "extrapolate"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_searched_objective_is_what_the_pipeline_gets(family, rule):
    """The loss the search optimised is the MSE the plan then gives inside the real pipeline."""
    pipe, prompts, kwargs, branches = _setup(family)
    calib = calibrate(pipe, prompts, K, progress=False, **kwargs)
    assert calib.solver().name == SOLVERS.get(family, "Euler")  # each family's shipped scheduler
    plan = budcache.search(calib, B, rule=rule, config=QUICK, progress=False)
    assert plan.record.solver == calib.solver().name
    assert sum(plan.mask) == B and plan.sigmas == pytest.approx(calib.sigmas)
    _check_applied(pipe, prompts, kwargs, plan, branches)


def test_unknown_blocks_fall_back_to_output_reuse_with_a_warning(monkeypatch):
    """Without budcache's row for Sana's blocks the search warns and uses output reuse, which then
    applies (batched CFG) with exactly B transformer calls."""
    monkeypatch.delitem(families.OWN_BLOCKS, "SanaTransformerBlock")
    pipe, make_prompt, kwargs, branches = _family("sana", ("default",))()
    prompts = [make_prompt(), make_prompt()]
    calib = calibrate(pipe, prompts, K, progress=False)
    with pytest.warns(UserWarning, match="falling back to output reuse"):
        plan = budcache.search(calib, B, config=QUICK, progress=False)
    assert plan.reuse == "output"
    _check_applied(pipe, prompts, kwargs, plan, branches)


def test_capture_holds_conditioning_once_and_the_pipeline_latents():
    pipe, prompts, kwargs, _ = _setup("flux-true-cfg")
    calib = calibrate(pipe, prompts, K, progress=False, **kwargs)
    steps = calib.captures[0].steps
    assert [c.context for c in steps[0].calls] == ["cond", "uncond"]
    assert all(s.calls[0] is steps[0].calls[0] for s in steps)  # unchanged conditioning stored once
    final = _run(pipe, prompts[0], kwargs, 0)
    assert torch.equal(calib.captures[0].final, final)
    assert calib.sigmas[-1] == 0.0 and len(calib.sigmas) == K + 1


def test_plain_fewer_step_reference_is_the_pipelines_own_schedule():
    """solver(B) runs the schedule the pipeline itself runs at B steps, and the record's Euler loss
    is the MSE of that B-step pipeline run to the K-step one."""
    pipe, prompts, kwargs, _ = _setup("flux-true-cfg")
    calib = calibrate(pipe, prompts, K, progress=False, **kwargs)
    short = calibrate(pipe, prompts, B, progress=False, **kwargs)
    assert calib.solver(B).sigmas == pytest.approx(short.sigmas, abs=1e-6)
    plan = budcache.search(calib, B, config=QUICK, progress=False)
    errors = [
        (_run(pipe, p, kwargs, i, B) - _run(pipe, p, kwargs, i)).pow(2).mean().item() for i, p in enumerate(prompts)
    ]
    assert plan.record.euler_objective == pytest.approx(sum(errors) / 2, rel=1e-3)


def test_wrong_guidance_rule_is_refused(monkeypatch):
    pipe, prompts, kwargs, _ = _setup("flux-true-cfg")
    calib = calibrate(pipe, prompts[:1], K, progress=False, **kwargs)
    monkeypatch.setattr(replay, "combine_for", lambda pipe: lambda outputs, calls, settings, x: outputs[0])
    with pytest.raises(ValueError, match="does not reproduce the pipeline's velocity"):
        budcache.search(calib, B, config=QUICK, progress=False)


def test_calibration_leaves_nothing_behind_even_when_the_pipeline_fails():
    pipe, prompts, kwargs, _ = _setup("flux-true-cfg")
    before = _run(pipe, prompts[0], kwargs, 0)
    with pytest.raises((RuntimeError, ValueError)):  # the pipeline fails on the malformed embeddings
        calibrate(pipe, [prompts[0], dict(prompt_embeds=torch.randn(1, 8, 7))], K, progress=False, **kwargs)
    assert "step" not in vars(pipe.scheduler) and "set_timesteps" not in vars(pipe.scheduler)
    assert pipe.transformer._diffusers_hook.get_hook("budcache_capture") is None
    assert torch.equal(_run(pipe, prompts[0], kwargs, 0), before)


def test_bad_calibration_input():
    pipe, prompts, kwargs, _ = _setup("flux-true-cfg")
    with pytest.raises(ValueError, match="at least one prompt"):
        calibrate(pipe, [], K)
    with pytest.raises(ValueError, match="sizes"):
        calibrate(pipe, prompts, K, sizes=[], progress=False)


def test_predictive_rule_validated_on_held_out_captures():
    pipe, prompts, kwargs, _ = _setup("wan-cfg")
    calib = calibrate(pipe, prompts[:1], K, progress=False, **kwargs)
    held_out = calibrate(pipe, prompts[1:], K, seed=7, progress=False, **kwargs)
    plan = budcache.search(calib, B, rule="extrapolate", validation=held_out, config=QUICK, progress=False)
    record = plan.record
    assert record.validation_objective is not None and record.validation_repeat_objective is not None
    assert (plan.rule == "extrapolate") == (record.validation_objective <= record.validation_repeat_objective)


def test_wan22_two_experts():
    """The first low-noise step computes and restarts the cache; each expert keeps its own caches;
    the summary counts per expert and branch; another boundary is refused."""
    pipe, make_prompt, kwargs, _ = _family("wan22", ())()
    prompts = [make_prompt(), make_prompt()]
    calib = calibrate(pipe, prompts, K, progress=False)
    assert calib.solver().name == "UniPCMultistep"
    experts = [s.calls[0].module for s in calib.captures[0].steps]
    switch = experts.index("transformer_2")
    assert 0 < switch < K and set(experts[switch:]) == {"transformer_2"}
    assert calib.forced_steps() == [switch]
    plan = budcache.search(calib, B, rule="extrapolate", config=QUICK, progress=False)
    assert plan.mask[switch] == 1 and plan.boundary_ratio == 0.875
    errors = []
    for i, prompt in enumerate(prompts):
        full = _run(pipe, prompt, kwargs, i)
        with budcache.apply(pipe, plan) as handle:
            cached = _run(pipe, prompt, kwargs, i)
            summary = handle.summary()
        errors.append((cached - full).pow(2).mean().item())
        for branch in ("cond", "uncond"):
            high, low = summary[f"transformer/{branch}"], summary[f"transformer_2/{branch}"]
            assert high["computed"] == sum(plan.mask[:switch]) and low["computed"] == sum(plan.mask[switch:])
            assert high["computed"] + high["reused"] == switch and low["computed"] + low["reused"] == K - switch
    assert sum(errors) / len(errors) == pytest.approx(plan.record.objective, rel=1e-4)
    pipe.register_to_config(boundary_ratio=0.5)
    with pytest.raises(budcache.PlanError, match="boundary_ratio=0.875"):
        budcache.apply(pipe, plan)


def test_wan22_one_plan_one_loss_in_search_compare_and_pipeline():
    """One Wan2.2 plan (UniPC, as shipped) under ``extrapolate`` gets the same loss from the search's
    evaluator, from the comparison's loop and inside the real pipeline: the cache restarts at the
    expert boundary in all three (without the restart the comparison would score another trajectory)."""
    from budcache.calibration import pipeline_source
    from budcache.evaluation.compare import static_outputs
    from budcache.plan import model_identity
    from budcache.sampling import sample
    from budcache.search.plan_search import source_evaluator

    pipe, make_prompt, kwargs, _ = _family("wan22", ())()
    prompts = [make_prompt(), make_prompt()]
    calib = calibrate(pipe, prompts, K, progress=False)
    switch = calib.forced_steps()[0]
    mask = [1 if k in (0, switch) or k % 3 == 0 else 0 for k in range(K)]
    plan = budcache.CachePlan(
        num_steps=K,
        budget=sum(mask),
        mask=mask,
        rule="extrapolate",
        sigmas=calib.sigmas,
        boundary_ratio=calib.boundary_ratio,
        model=model_identity(pipe.transformer),
    )
    with torch.no_grad(), pipeline_source(calib, held_out=calib) as source:
        searched = source_evaluator(source, "calib", rule="extrapolate")(mask)
        full = static_outputs(source, "eval", source.solver, [1] * K, "repeat")
        compared = (static_outputs(source, "eval", source.solver, mask, "extrapolate") - full).pow(2).flatten(1).mean(1)
        no_restart = torch.cat(
            [sample(b.denoiser, b.noise, source.solver, mask, "extrapolate") for b in source.batches("eval")]
        )
    applied = []
    for i, prompt in enumerate(prompts):
        reference = _run(pipe, prompt, kwargs, i)
        with budcache.apply(pipe, plan):
            applied.append((_run(pipe, prompt, kwargs, i) - reference).pow(2).mean().item())
    assert float(compared.mean()) == pytest.approx(searched, rel=1e-4)
    assert sum(applied) / len(applied) == pytest.approx(searched, rel=1e-4)
    assert float((no_restart - full).pow(2).mean()) != pytest.approx(searched, rel=1e-3)


def _scheduler(name):
    from diffusers import DPMSolverMultistepScheduler, DPMSolverSinglestepScheduler, UniPCMultistepScheduler

    flow = dict(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    return {
        "unipc-order3": lambda: UniPCMultistepScheduler(solver_order=3, **flow),
        "unipc-no-corrector": lambda: UniPCMultistepScheduler(disable_corrector=list(range(K)), **flow),
        "dpm-multistep-order3": lambda: DPMSolverMultistepScheduler(solver_order=3, **flow),
        "dpm-singlestep": lambda: DPMSolverSinglestepScheduler(**flow),
    }[name]()


@pytest.mark.parametrize("name", ["unipc-order3", "unipc-no-corrector", "dpm-multistep-order3", "dpm-singlestep"])
def test_scheduler_variants_replay_exactly(name):
    """UniPC of any order, with or without its corrector, and DPM-Solver++ multistep or singlestep:
    the replay reproduces the pipeline, and the searched loss is what the plan gives inside it."""
    torch.manual_seed(0)
    pipe = tiny_wan_pipeline(scheduler=_scheduler(name))
    prompts = [dict(prompt_embeds=torch.randn(1, 8, 32), negative_prompt_embeds=torch.randn(1, 8, 32))]
    kwargs = dict(height=16, width=16, num_frames=5, guidance_scale=4.0)
    calib = calibrate(pipe, prompts, K, progress=False, **kwargs)
    assert calib.solver().name == type(pipe.scheduler).__name__.removesuffix("Scheduler")
    plan = budcache.search(calib, B, rule="extrapolate", config=QUICK, progress=False)
    _check_applied(pipe, prompts, kwargs, plan, ("cond", "uncond"))
