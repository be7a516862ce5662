"""Stage 2 on real diffusers pipelines (tiny random configs, CPU): the aligned plan applied inside the
pipeline gives exactly the loss alignment reported, for every family calibrate supports, including Wan (no ``sigmas=``),
Wan2.2 (the expert boundary stays where the pipeline puts it) and CogView4 (its transformer sees the
unshifted time, not 1000 * sigma)."""

import dataclasses

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

import budcache
from budcache import families
from budcache.align import AlignConfig, ModelTimes, SigmaSchedule, boundary_pins, student_solver
from budcache.align.fit import _loss, _teacher
from budcache.calibration import calibrate, pipeline_source
from budcache.plan import PlanError, model_identity
from tests.fixtures import tiny_families
from tests.fixtures.tiny import tiny_flux_pipeline, tiny_sd3_pipeline, tiny_wan_pipeline

K = 8
MASK = [1, 0, 1, 0, 0, 1, 0, 0]
QUICK = AlignConfig(epochs=3, lr=0.005)


def _flux():
    def prompt():
        return dict(
            prompt_embeds=torch.randn(1, 8, 32),
            pooled_prompt_embeds=torch.randn(1, 32),
            negative_prompt_embeds=torch.randn(1, 8, 32),
            negative_pooled_prompt_embeds=torch.randn(1, 32),
        )

    return tiny_flux_pipeline(), prompt, dict(height=16, width=16, true_cfg_scale=3.0)


def _sd3():
    def prompt():
        return dict(
            prompt_embeds=torch.randn(1, 8, 32),
            pooled_prompt_embeds=torch.randn(1, 64),
            negative_prompt_embeds=torch.randn(1, 8, 32),
            negative_pooled_prompt_embeds=torch.randn(1, 64),
        )

    return tiny_sd3_pipeline(), prompt, dict(height=16, width=16, guidance_scale=5.0)


def _wan(scheduler=None):  # Wan's pipeline takes no sigmas=: the plan hook replaces the scheduler's schedule
    def build():
        def prompt():
            return dict(prompt_embeds=torch.randn(1, 8, 32), negative_prompt_embeds=torch.randn(1, 8, 32))

        pipe = tiny_wan_pipeline(scheduler=scheduler)  # default: UniPC, as Wan ships
        return pipe, prompt, dict(height=16, width=16, num_frames=5, guidance_scale=4.0)

    return build


def _family(name, scheduler=None):
    def build():
        family = tiny_families.FAMILIES[name]
        seeds = iter(range(100))

        def prompt():
            kwargs = family.call_kwargs(seed=next(seeds))
            return {k: v for k, v in kwargs.items() if k not in ("generator", "output_type")}

        pipe = family.pipeline()
        if scheduler is not None:
            pipe.scheduler = scheduler
        return pipe, prompt, {}

    return build


# every family that calibrate and search support (all tiny pipelines but LTX-2, whose audio latents evolve too);
# Wan2.1 and Wan2.2 as shipped step with UniPC, Sana with DPM-Solver++: stage 2 steps their native equals
FAMILIES = {
    "flux": _flux,
    "sd3": _sd3,
    "wan-euler": _wan(FlowMatchEulerDiscreteScheduler(shift=3.0)),
    "wan-unipc": _wan(),
    "sana-dpm": _family("sana"),
    "wan22-euler": _family("wan22", FlowMatchEulerDiscreteScheduler(shift=3.0)),
    "wan22-unipc": _family("wan22"),
    **{
        name: _family(name)
        for name in (
            "cogview4",
            "z_image",
            "z_image_turbo",
            "qwen_image",
            "qwen_image21",
            "flux2",
            "flux2_klein",
            "chroma",
            "hunyuan_video15",
        )
    },
}


def _setup(name):
    torch.manual_seed(0)
    pipe, make_prompt, kwargs = FAMILIES[name]()
    prompts = [make_prompt() for _ in range(2)]
    calib = calibrate(pipe, prompts, K, progress=False, **kwargs)
    mask = list(MASK)
    for k in calib.forced_steps():  # Wan2.2: the first step of the second expert computes
        mask[k] = 1
    plan = budcache.CachePlan(
        num_steps=K,
        budget=sum(mask),
        mask=mask,
        rule="extrapolate",
        sigmas=calib.sigmas,
        boundary_ratio=calib.boundary_ratio,
        model=model_identity(pipe.transformer),
    )
    return pipe, prompts, kwargs, calib, plan


def _latent_scale(pipe) -> float:
    """What the pipeline's ``output_type="latent"`` multiplies the MSE by: FLUX.2 Klein returns its latents
    denormalized by the VAE's batch-norm statistics (std ``sqrt(running_var + eps)``, uniform at init)."""
    bn = getattr(getattr(pipe, "vae", None), "bn", None)
    if bn is None or "Klein" not in type(pipe).__name__:
        return 1.0
    var = bn.running_var + pipe.vae.config.batch_norm_eps
    assert bool((var == var[0]).all()) and bool((bn.running_mean == 0).all())
    return float(var[0])


def _applied(pipe, prompts, kwargs, plan):
    """Mean MSE of the plan's result inside the pipeline to the pipeline's full-compute result (in the
    transformer's latent space, where alignment measures it)."""
    errors = []
    for i, prompt in enumerate(prompts):
        run = dict(**prompt, **kwargs, num_inference_steps=K, output_type="latent")
        full = pipe(**run, generator=torch.Generator().manual_seed(i))[0]
        with budcache.apply(pipe, plan) as handle:
            cached = pipe(**run, generator=torch.Generator().manual_seed(i))[0]
            assert all(c["computed"] + c["reused"] <= K for c in handle.summary().values())
        errors.append((cached - full).pow(2).mean().item())
    return sum(errors) / len(errors) / _latent_scale(pipe)


def _replayed(calib, plan, sigmas, model_sigmas=None):
    """The loss alignment computes for ``sigmas`` (and ``model_sigmas``; replayed captures, full compute as teacher)."""
    tensors = [torch.tensor(s, dtype=torch.float64) for s in (sigmas, model_sigmas) if s is not None]
    with torch.no_grad(), pipeline_source(calib, plan.reuse) as source:
        batches = source.batches("calib")
        teachers = [_teacher(b, source.solver, source.restarts) for b in batches]
        return _loss(batches, teachers, tensors, student_solver(source.solver), plan, False, False, source.restarts)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_aligned_loss_is_what_the_pipeline_gets(name):
    """``budcache.align(plan, calib)`` reports a loss the aligned plan then gives inside the pipeline, and
    so does any schedule the alignment can reach (a random one of its parametrization, far off the grid)."""
    pipe, prompts, kwargs, calib, plan = _setup(name)
    aligned, result = budcache.align(plan, calib, config=QUICK, progress=False)
    assert aligned.mask == plan.mask and aligned.sigmas[0] == plan.sigmas[0] and aligned.sigmas[-1] == plan.sigmas[-1]
    best = result.validation_loss[result.best_epoch]
    assert best <= result.validation_loss[0]
    assert _applied(pipe, prompts, kwargs, aligned) == pytest.approx(best, rel=1e-4)
    schedule = SigmaSchedule(plan.sigmas, pinned=boundary_pins(calib.forced_steps()))
    with torch.no_grad():
        schedule.logits.add_(0.4 * torch.randn(schedule.logits.shape, generator=torch.Generator().manual_seed(1)))
    moved = dataclasses.replace(plan, sigmas=schedule().tolist())
    assert max(abs(a - b) for a, b in zip(moved.sigmas, plan.sigmas)) > 0.01
    assert _applied(pipe, prompts, kwargs, moved) == pytest.approx(_replayed(calib, plan, moved.sigmas), rel=1e-4)


@pytest.mark.parametrize("name", sorted(set(FAMILIES) - {"wan22-euler", "wan22-unipc"}))  # two experts: refused
def test_decoupled_model_times_reach_the_transformer_inside_the_pipeline(name):
    """A plan's ``model_sigmas`` become the timesteps the pipeline passes to its transformer (by the family's
    time rule: CogView4's unshifted times), while the scheduler steps over the plan's sigmas: the loss inside
    the pipeline equals the replayed one, for what alignment returns and for model sigmas far from the steps'."""
    pipe, prompts, kwargs, calib, plan = _setup(name)
    config = dataclasses.replace(QUICK, model_times=True)
    aligned, result = budcache.align(plan, calib, config=config, progress=False)
    assert _applied(pipe, prompts, kwargs, aligned) == pytest.approx(
        result.validation_loss[result.best_epoch], rel=1e-4
    )
    times = ModelTimes(K)
    with torch.no_grad():
        times.offsets.copy_(0.5 * torch.randn(K, generator=torch.Generator().manual_seed(2), dtype=torch.float64))
        told = times(torch.tensor(plan.sigmas, dtype=torch.float64)).tolist()
    moved = dataclasses.replace(plan, model_sigmas=told)
    assert max(abs(a - b) for a, b in zip(told, plan.sigmas)) > 0.02
    replayed = _replayed(calib, plan, plan.sigmas, told)
    assert replayed != pytest.approx(_replayed(calib, plan, plan.sigmas), rel=1e-3)  # the times matter
    assert _applied(pipe, prompts, kwargs, moved) == pytest.approx(replayed, rel=1e-4)


def test_decoupled_model_times_are_refused_for_two_experts():
    """Wan2.2's timesteps pick the expert: decoupled times would move the switch, so they are refused."""
    pipe, prompts, kwargs, calib, plan = _setup("wan22-euler")
    with pytest.raises(PlanError, match="two-expert"):
        budcache.align(plan, calib, config=dataclasses.replace(QUICK, model_times=True), progress=False)
    with pytest.raises(PlanError, match="two experts"):
        dataclasses.replace(plan, model_sigmas=plan.sigmas[:-1])


def test_wan22_alignment_keeps_the_expert_boundary():
    """Both sigmas around Wan2.2's expert switch are pinned: every step keeps the expert the pipeline gave it."""
    pipe, prompts, kwargs, calib, plan = _setup("wan22-euler")
    (switch,) = calib.forced_steps()
    boundary = calib.boundary_ratio
    expert = [s >= boundary for s in calib.sigmas[:-1]]
    assert expert.index(False) == switch
    schedule = SigmaSchedule(plan.sigmas, pinned=boundary_pins([switch]))
    for seed in range(20):
        with torch.no_grad():
            schedule.logits.copy_(3 * torch.randn(K, generator=torch.Generator().manual_seed(seed)))
        sigmas = schedule().tolist()
        assert [s >= boundary for s in sigmas[:-1]] == expert
        assert sigmas[switch - 1] == plan.sigmas[switch - 1] and sigmas[switch] == plan.sigmas[switch]
    aligned, _ = budcache.align(plan, calib, config=QUICK, progress=False)
    assert [s >= boundary for s in aligned.sigmas[:-1]] == expert
    seen = []
    hook = pipe.transformer_2.register_forward_pre_hook(
        lambda m, a, kw: seen.append(float(kw["timestep"][0])), with_kwargs=True
    )
    try:
        _applied(pipe, prompts[:1], kwargs, dataclasses.replace(plan, sigmas=schedule().tolist()))
    finally:
        hook.remove()
    assert min(seen) < 1000 * boundary and all(t < 1000 * boundary for t in seen)


def test_time_rule_per_family():
    """The time the transformer sees at a schedule the pipeline did not choose: 1000 * sigma for FLUX and
    Wan, CogView4's unshifted time; the plan hook feeds the same times the replay uses."""
    assert families.time_rule(tiny_flux_pipeline()) is families.sigma_time
    pipe, prompts, kwargs, calib, plan = _setup("cogview4")
    assert families.time_rule(pipe) is families.unshifted_time
    captured = torch.stack([s.timesteps[0].flatten()[0] for s in calib.captures[0].steps]).double()
    rule = families.unshifted_time(
        torch.tensor(calib.sigmas[:-1], dtype=torch.float64), pipe.scheduler.config, calib.schedule_kwargs
    )
    assert torch.allclose(rule, captured, atol=1e-3)
    assert not torch.allclose(1000 * torch.tensor(calib.sigmas[:-1], dtype=torch.float64), captured, atol=1)
    schedule = SigmaSchedule(plan.sigmas)
    with torch.no_grad():
        schedule.logits.add_(0.3)
        schedule.logits[0] -= 1.0
    moved = dataclasses.replace(plan, sigmas=schedule().tolist())
    seen = []
    hook = pipe.transformer.register_forward_pre_hook(
        lambda m, a, kw: seen.append(float(kw["timestep"][0])), with_kwargs=True
    )
    try:
        _applied(pipe, prompts[:1], kwargs, moved)
    finally:
        hook.remove()
    want = families.unshifted_time(torch.tensor(moved.sigmas[:-1]), pipe.scheduler.config, calib.schedule_kwargs)
    applied = seen[len(seen) // 2 :]  # the full-compute run came first
    assert len(applied) == 2 * K and torch.allclose(torch.tensor(applied[::2]), want.float(), rtol=1e-5)


def test_a_plan_without_sigmas_starts_from_the_calibrated_schedule():
    pipe, prompts, kwargs, calib, plan = _setup("flux")
    bare = dataclasses.replace(plan, sigmas=None)
    with pytest.raises(budcache.PlanError, match="no sigmas"):
        budcache.align(bare, [], progress=False)
    aligned, result = budcache.align(bare, calib, config=AlignConfig(epochs=1, lr=0.005), progress=False)
    assert result.initial == pytest.approx(calib.sigmas) and len(aligned.sigmas) == K + 1


def test_align_command_on_a_plan_searched_at_the_pipeline_default(tmp_path, capsys):
    """`budcache align --pipeline` on a plan without stored sigmas: aligned from the pipeline's own
    schedule, which the aligned plan then carries explicitly."""
    import json

    from diffusers import DiffusionPipeline

    from budcache.cli import main
    from tests.fixtures.tiny_text import quiet, save_tiny_flux_pipeline

    folder = save_tiny_flux_pipeline(tmp_path / "flux")
    with quiet():
        pipe = DiffusionPipeline.from_pretrained(folder)
    steps = 6
    plan = budcache.CachePlan(
        num_steps=steps, budget=3, mask=[1, 0, 1, 0, 1, 0], model=model_identity(pipe.transformer)
    )
    plan.save(tmp_path / "plan.json")
    assert json.loads((tmp_path / "plan.json").read_text()).get("sigmas") is None
    (tmp_path / "calib.txt").write_text("a red square\na blue circle\n")
    (tmp_path / "val.txt").write_text("a green star\n")
    main(
        [
            "align",
            str(tmp_path / "plan.json"),
            "--pipeline",
            str(folder),
            "--prompts",
            str(tmp_path / "calib.txt"),
            "--validation-prompts",
            str(tmp_path / "val.txt"),
            "--steps",
            str(steps),
            "--height",
            "16",
            "--width",
            "16",
            "--call",
            "max_sequence_length=16",
            "--epochs",
            "2",
            "--lr",
            "0.005",
            "--no-progress",
            "--out",
            str(tmp_path / "aligned.json"),
        ]
    )
    assert "validation MSE" in capsys.readouterr().out
    aligned = budcache.CachePlan.load(tmp_path / "aligned.json")
    pipe.set_progress_bar_config(disable=True)
    default = calibrate(
        pipe, ["a red square"], steps, progress=False, height=16, width=16, max_sequence_length=16
    ).sigmas
    assert aligned.mask == plan.mask and len(aligned.sigmas) == steps + 1
    assert aligned.sigmas[0] == pytest.approx(default[0]) and aligned.sigmas[-1] == pytest.approx(default[-1])


@pytest.mark.parametrize(
    "change, refused",
    [
        ({"solver_type": "bh1"}, "UniPCMultistepScheduler (solver_type='bh1')"),
        ({"_class_name": "DPMSolverSinglestepScheduler"}, "this pipeline steps with DPMSolverSinglestepScheduler"),
    ],
)
def test_align_command_refuses_a_scheduler_it_cannot_differentiate(tmp_path, change, refused):
    """A scheduler whose step stage 2 has no differentiable equal of is refused from the folder's
    model_index.json and scheduler config, before anything is loaded or calibrated."""
    import json

    from budcache.cli import main
    from tests.fixtures.tiny_text import save_tiny_wan_pipeline

    folder = save_tiny_wan_pipeline(tmp_path / "wan")
    config = folder / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), **change}))
    if "_class_name" in change:
        index = json.loads((folder / "model_index.json").read_text())
        index["scheduler"][1] = change["_class_name"]
        (folder / "model_index.json").write_text(json.dumps(index))
    (tmp_path / "calib.txt").write_text("a red square\n")
    plan = budcache.CachePlan(num_steps=6, budget=3, mask=[1, 0, 1, 0, 1, 0])
    plan.save(tmp_path / "plan.json")
    with pytest.raises(SystemExit, match=refused.replace("(", r"\(").replace(")", r"\)")):
        main(
            [
                "align",
                str(tmp_path / "plan.json"),
                "--pipeline",
                str(folder),
                "--prompts",
                str(tmp_path / "calib.txt"),
                "--out",
                str(tmp_path / "aligned.json"),
            ]
        )
