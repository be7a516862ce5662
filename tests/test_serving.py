"""Serving (#18): plan sets picked per call, the searched-on schedule, sharing through a folder or the
Hub cache, and concurrency, on the tiny offline FluxPipeline."""

import copy
import json
import threading

import pytest
import torch

import budcache
from budcache.cli import main
from budcache.plan import CachePlan, PlanError, SearchRecord, model_identity, uniform_mask
from budcache.planset import PlanSet, load_plans
from budcache.search import SearchConfig
from tests.fixtures.tiny import tiny_flux_pipeline, tiny_flux_transformer


@pytest.fixture
def pipe(tiny_flux):
    return tiny_flux_pipeline(tiny_flux.transformer)


def run(pipe, steps, size=8, seed=0, **kw):
    return pipe(
        prompt_embeds=torch.ones(1, 8, 32),
        pooled_prompt_embeds=torch.ones(1, 32),
        height=size,
        width=size,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(seed),
        output_type="latent",
        **kw,
    ).images


def plan(pipe, k, b, **kw):
    return CachePlan(
        num_steps=k,
        budget=b,
        mask=uniform_mask(k, b),
        model=model_identity(pipe.transformer),
        record=SearchRecord(objective=0.1 / b, uniform_objective=0.2 / b),
        **kw,
    )


def plan_set(pipe):
    return PlanSet([plan(pipe, 6, 3), plan(pipe, 6, 2), plan(pipe, 8, 3)])


def test_plan_set_file_round_trip_and_refusals(pipe, tmp_path):
    plans = plan_set(pipe)
    assert [(p.num_steps, p.budget) for p in plans] == [(6, 2), (6, 3), (8, 3)]  # sorted
    path = plans.save(tmp_path / "plans.json")
    assert PlanSet.load(path) == plans and load_plans(path) == plans
    assert load_plans(plans.plans[0].save(tmp_path / "one.json")) == plans.plans[0]
    with pytest.raises(PlanError, match="two plans for K=6 steps and budget B=2"):
        PlanSet([plan(pipe, 6, 2), plan(pipe, 6, 2)])
    with pytest.raises(PlanError, match="share field 'reuse'"):
        PlanSet([plan(pipe, 6, 2), plan(pipe, 6, 3, reuse="output")])
    with pytest.raises(PlanError, match="at least one"):
        PlanSet([])
    bad = plans.to_dict()
    bad["plans"][1]["budget"] = 4
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(PlanError, match=r"plans\[1\]: .*'mask' has 3 computed steps"):
        load_plans(tmp_path / "bad.json")
    for text in (
        '{"schema_version": 1, "plans": []}',
        '{"schema_version": 1, "plans": [1]}',
        '{"schema_version": 1, "plans": [], "x": 1}',
        "[",
        '{"plans": 3}',
    ):
        (tmp_path / "bad.json").write_text(text)
        with pytest.raises(PlanError):
            load_plans(tmp_path / "bad.json")


@torch.no_grad()
def test_plan_set_picks_the_plan_per_call_without_stale_cache(pipe):
    plans = plan_set(pipe)
    alone = {}
    for p in plans:
        with budcache.apply(pipe, p):
            alone[p.num_steps, p.budget] = run(pipe, p.num_steps)
    with budcache.apply(pipe, plans, budget=2) as handle:
        assert torch.equal(run(pipe, 6), alone[6, 2])
        assert handle.summary() == {"cond": {"computed": 2, "reused": 4}} and handle.plan.budget == 2
        handle.budget = 3
        assert torch.equal(run(pipe, 6), alone[6, 3])  # the switch reuses nothing from the B=2 run
        assert torch.equal(run(pipe, 8), alone[8, 3])  # picked by num_inference_steps
        with handle.using(budget=2):
            assert torch.equal(run(pipe, 6), alone[6, 2])
        assert handle.budget == 3
        with pytest.raises(PlanError, match=r"no plan for 7 steps; it holds K=6: B=2, 3; K=8: B=3"):
            run(pipe, 7)
        handle.budget = 2
        with pytest.raises(PlanError, match=r"no plan for 8 steps at budget 2; it holds K=6: B=2, 3; K=8: B=3"):
            run(pipe, 8)
        with pytest.raises(PlanError, match="no plan at budget 5; it holds"):
            handle.budget = 5
        handle.budget = None
        assert torch.equal(run(pipe, 8), alone[8, 3])  # the only plan for 8 steps
        with pytest.raises(PlanError, match="choose a budget for 6 steps"):
            run(pipe, 6)
    with pytest.raises(PlanError, match="apply a plan set"):
        budcache.apply(pipe, plans.plans[0], budget=5)


@torch.no_grad()
def test_changing_the_budget_during_a_generation_is_refused(pipe):
    plans = plan_set(pipe)
    refused = []
    with budcache.apply(pipe, plans, budget=2) as handle:
        expected = run(pipe, 6)

        def change(pipe, i, t, kw):
            try:
                handle.budget = 3
            except PlanError as e:
                refused.append(str(e))
            return kw

        assert torch.equal(run(pipe, 6, callback_on_step_end=change), expected)
        assert len(refused) == 6 and "during a generation" in refused[0]
        assert handle.summary() == {"cond": {"computed": 2, "reused": 4}}

        def fail(pipe, i, t, kw):
            raise KeyError("boom")

        with pytest.raises(KeyError):
            run(pipe, 6, callback_on_step_end=fail)
        with pytest.raises(PlanError, match="handle.reset"):
            handle.budget = 3  # the exception that escaped left the generation open
        handle.reset()
        handle.budget = 3
        run(pipe, 6)
        assert handle.summary() == {"cond": {"computed": 3, "reused": 3}}


@torch.no_grad()
def test_a_plan_refuses_a_call_on_another_schedule(pipe):
    """FLUX's dynamic shifting gives each resolution its own sigmas: a plan records the schedule it was
    searched on and refuses another (here 16x16 for a plan searched at 8x8)."""
    prompts = [dict(prompt_embeds=torch.randn(1, 8, 32), pooled_prompt_embeds=torch.randn(1, 32)) for _ in range(2)]
    calib = budcache.calibrate(pipe, prompts, 6, progress=False, height=8, width=8)
    searched = budcache.search(
        calib, 3, config=SearchConfig(strategy="classic", iterations=10, starts=1, kicks=0), progress=False
    )
    assert searched.schedule == pytest.approx(calib.sigmas)
    with budcache.apply(pipe, searched) as handle:
        run(pipe, 6, size=8)
        with pytest.raises(PlanError, match="searched on one schedule"):
            run(pipe, 6, size=16)
        run(pipe, 6, size=8)
        assert handle.summary() == {"cond": {"computed": 3, "reused": 3}}
    assert "searched on the pipeline schedule" in searched.describe()
    # a plan set holding it refuses the same way; a plan without a recorded schedule runs anywhere
    with budcache.apply(pipe, PlanSet([searched])):
        with pytest.raises(PlanError, match="searched on one schedule"):
            run(pipe, 6, size=16)
    with budcache.apply(pipe, plan(pipe, 6, 3)):
        run(pipe, 6, size=16)


@torch.no_grad()
def test_save_pretrained_folder_and_hub_id(pipe, tmp_path, monkeypatch):
    """A folder written by save_pretrained, and the same laid out as a Hub repo in the Hub cache (read
    offline): ``from_pretrained`` and ``budcache.apply(pipe, "org/plans")``."""
    import huggingface_hub.constants as hub

    one, plans = plan(pipe, 6, 3), plan_set(pipe)
    one.save_pretrained(tmp_path / "one")
    assert CachePlan.from_pretrained(tmp_path / "one") == one
    with budcache.apply(pipe, one):
        expected = run(pipe, 6)
    with budcache.apply(pipe, str(tmp_path / "one")) as handle:
        assert handle.plan == one and torch.equal(run(pipe, 6), expected)
    with budcache.apply(pipe, tmp_path / "one" / "budcache_plan.json"):
        assert torch.equal(run(pipe, 6), expected)

    cache, commit = tmp_path / "hub", "0" * 40
    snapshot = cache / "models--org--plans" / "snapshots" / commit
    plans.save_pretrained(snapshot)
    (cache / "models--org--plans" / "refs").mkdir()
    (cache / "models--org--plans" / "refs" / "main").write_text(commit)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    assert PlanSet.from_pretrained("org/plans") == plans
    with budcache.apply(pipe, "org/plans", budget=3) as handle:
        assert torch.equal(run(pipe, 6), expected) and handle.plans == plans
    with pytest.raises(PlanError, match="org/missing: cannot get budcache_plan.json from the Hugging Face Hub"):
        CachePlan.from_pretrained("org/missing")
    with pytest.raises(PlanError, match="not a Hub repo id"):
        budcache.apply(pipe, str(tmp_path / "nowhere" / "plan.json"))


@torch.no_grad()
def test_two_pipelines_with_their_own_plans_share_nothing():
    pipes = [tiny_flux_pipeline(tiny_flux_transformer(seed)) for seed in (0, 1)]
    plans = [plan(pipes[0], 6, 2), plan(pipes[1], 6, 4)]
    expected = []
    for p, pl in zip(pipes, plans):
        with budcache.apply(p, pl):
            expected.append([run(p, 6, seed=s) for s in range(3)])
    handles = [budcache.apply(p, pl) for p, pl in zip(pipes, plans)]
    got, errors = [None, None], []

    def serve(i):
        try:
            got[i] = [run(pipes[i], 6, seed=s) for s in range(3)]
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=serve, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i in range(2):
        assert all(torch.equal(a, b) for a, b in zip(got[i], expected[i]))
        assert handles[i].summary() == {"cond": {"computed": plans[i].budget, "reused": 6 - plans[i].budget}}
        handles[i].remove()


@torch.no_grad()
def test_one_pipeline_called_from_a_second_thread_is_refused(pipe):
    with budcache.apply(pipe, plan(pipe, 6, 3)) as handle:
        expected = run(pipe, 6)
        second = []

        def other():
            try:
                run(pipe, 6)
            except RuntimeError as e:
                second.append(str(e))

        def midway(pipe, i, t, kw):
            if i == 2:
                t2 = threading.Thread(target=other)
                t2.start()
                t2.join()
            return kw

        assert torch.equal(run(pipe, 6, callback_on_step_end=midway), expected)
        assert len(second) == 1 and "generating in another thread" in second[0]
        assert handle.summary() == {"cond": {"computed": 3, "reused": 3}}
        out = []
        t3 = threading.Thread(target=lambda: out.append(run(pipe, 6)))  # after the generation: served
        t3.start()
        t3.join()
        assert torch.equal(out[0], expected)


def test_show_prints_a_plan_set_as_a_table(pipe, tmp_path, capsys):
    path = plan_set(pipe).save(tmp_path / "plans.json")
    main(["show", str(path)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("plan set: 3 plans (residual reuse), model FluxTransformer2DModel")
    assert lines[1].split() == ["K", "B", "objective", "uniform", "speedup", "mask", "sizes"]
    assert lines[2].split() == ["6", "2", "0.05", "0.1", "3.00x", "#..#..", "any"]
    assert lines[4].split()[:2] == ["8", "3"] and lines[4].split()[4] == "2.67x"
    main(["show", "--json", str(path)])
    assert json.loads(capsys.readouterr().out) == plan_set(pipe).to_dict()
    with pytest.raises(SystemExit) as e:
        main(["show", "--png", str(tmp_path / "x.png"), str(path)])
    assert e.value.code == 2 and "--png draws one plan" in capsys.readouterr().err


def test_a_plan_set_needs_a_scheduler(pipe):
    with pytest.raises(PlanError, match="a transformer without a scheduler takes one plan"):
        budcache.apply(pipe.transformer, plan_set(pipe))


def _flux_prompt() -> dict:
    return dict(prompt_embeds=torch.randn(1, 8, 32), pooled_prompt_embeds=torch.randn(1, 32))


def _sd3_prompt() -> dict:
    return dict(prompt_embeds=torch.randn(1, 8, 32), pooled_prompt_embeds=torch.randn(1, 64), guidance_scale=1.0)


def _sibling(cls, t2i):
    """``cls`` (an image-to-image or inpainting pipeline) on a text-to-image pipeline's components."""
    pipe = cls(**{k: v for k, v in t2i.components.items() if k not in ("image_encoder", "feature_extractor")})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _flux_img2img():
    from diffusers import FluxImg2ImgPipeline

    t2i = tiny_flux_pipeline()
    return _sibling(FluxImg2ImgPipeline, t2i), t2i, _flux_prompt


def _sd3_img2img():
    from diffusers import StableDiffusion3Img2ImgPipeline

    from tests.fixtures.tiny import tiny_sd3_pipeline

    t2i = tiny_sd3_pipeline()
    return _sibling(StableDiffusion3Img2ImgPipeline, t2i), t2i, _sd3_prompt


@torch.no_grad()
@pytest.mark.parametrize("family", [_flux_img2img, _sd3_img2img])
def test_img2img_plan_searched_with_the_strength_applies_and_others_are_refused(family):
    """strength 0.6 of 10 steps runs steps 4..9: calibrated with the image and strength, the plan covers those
    6 steps and inside the pipeline gives exactly the searched loss; a text-to-image plan, another strength or
    another step count is refused."""
    torch.manual_seed(0)
    pipe, t2i, prompt = family()
    image = torch.rand(1, 3, 8, 8)
    prompts = [prompt() for _ in range(2)]
    kw = dict(image=image, strength=0.6, height=8, width=8)
    calib = budcache.calibrate(pipe, prompts, 10, progress=False, **kw)
    assert (calib.num_steps, calib.begin_index) == (6, 4)
    searched = budcache.search(
        calib, 3, config=SearchConfig(strategy="classic", iterations=10, starts=1, kicks=0), progress=False
    )
    assert (searched.num_steps, searched.begin_index, searched.total_steps) == (6, 4, 10)
    assert "image-to-image: steps 4..9" in searched.describe()

    def call(p, steps=10, seed=0, **extra):
        return p(
            **prompts[0],
            num_inference_steps=steps,
            generator=torch.Generator().manual_seed(seed),
            output_type="latent",
            **{**kw, **extra},
        )[0]

    full = call(pipe)
    with budcache.apply(pipe, searched) as handle:
        cached = call(pipe)
        assert list(handle.summary().values()) == [{"computed": 3, "reused": 3}]
        error = (cached - full).pow(2).mean().item()
        with pytest.raises(
            PlanError,
            match="image-to-image call starting at step 4 of 10 steps; this is an "
            "image-to-image call starting at step 2",
        ):
            call(pipe, strength=0.8)
        with pytest.raises(PlanError, match="num_inference_steps=10"):
            call(pipe, steps=12)
    with budcache.apply(pipe, searched):  # the second calibration prompt (seed 1)
        second_cached = pipe(
            **prompts[1], num_inference_steps=10, generator=torch.Generator().manual_seed(1), output_type="latent", **kw
        )[0]
    second_full = pipe(
        **prompts[1], num_inference_steps=10, generator=torch.Generator().manual_seed(1), output_type="latent", **kw
    )[0]
    mean = (error + (second_cached - second_full).pow(2).mean().item()) / 2
    assert mean == pytest.approx(searched.record.objective, rel=1e-4)
    text_to_image = CachePlan(num_steps=10, budget=4, mask=uniform_mask(10, 4))
    with budcache.apply(pipe, text_to_image):
        with pytest.raises(
            PlanError, match="searched for a text-to-image call .* this is an image-to-image call starting at step 4"
        ):
            call(pipe)
    with budcache.apply(t2i, searched):
        with pytest.raises(PlanError, match="this is a text-to-image call"):
            t2i(**prompts[0], num_inference_steps=10, height=8, width=8, output_type="latent")


@torch.no_grad()
def test_lora_adapters_are_part_of_the_fingerprint(tiny_flux):
    """Real peft LoRA adapters, added and weighted through diffusers' PEFT integration."""
    import warnings

    peft = pytest.importorskip("peft")
    pipe = tiny_flux_pipeline(copy.deepcopy(tiny_flux.transformer))
    base = plan(pipe, 6, 3)
    pipe.transformer.add_adapter(
        peft.LoraConfig(r=2, lora_alpha=4, target_modules=["to_q", "to_k"]), adapter_name="style"
    )
    pipe.transformer.set_adapters(["style"], [0.8])
    assert model_identity(pipe.transformer)["adapters"] == "style=0.8"  # the scale set, not alpha / r times it
    assert model_identity(pipe.transformer)["fingerprint"] == base.model["fingerprint"]  # same base weights
    with_lora = plan(pipe, 6, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        budcache.apply(pipe, with_lora).remove()  # the same adapters and scale: silent
    with pytest.warns(UserWarning, match="searched with no LoRA adapter, the transformer has LoRA adapters style=0.8"):
        budcache.apply(pipe, base).remove()
    pipe.transformer.set_adapters(["style"], [0.5])
    with pytest.warns(UserWarning, match="style=0.8, the transformer has LoRA adapters style=0.5"):
        budcache.apply(pipe, with_lora).remove()
    pipe.transformer.add_adapter(peft.LoraConfig(r=4, lora_alpha=4, target_modules=["to_q"]), adapter_name="speed")
    pipe.transformer.set_adapters(["style", "speed"], [0.8, 1.0])
    with pytest.warns(UserWarning, match="the transformer has LoRA adapters speed=1,style=0.8"):
        budcache.apply(pipe, with_lora).remove()
    pipe.transformer.disable_adapters()
    with pytest.warns(UserWarning, match="LoRA adapters style=0.8, the transformer has no LoRA adapter"):
        budcache.apply(pipe, with_lora).remove()
    pipe.transformer.enable_adapters()
    pipe.transformer.delete_adapters(["style", "speed"])
    assert "adapters" not in model_identity(pipe.transformer)


def _inpaint(family: str):
    from diffusers import FluxInpaintPipeline, StableDiffusion3InpaintPipeline

    from tests.fixtures.tiny import tiny_sd3_pipeline

    if family == "flux":
        return _sibling(FluxInpaintPipeline, tiny_flux_pipeline()), _flux_prompt
    return _sibling(StableDiffusion3InpaintPipeline, tiny_sd3_pipeline(channels=16)), _sd3_prompt


@torch.no_grad()
@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_an_inpainting_plan_reproduces_its_searched_loss_inside_the_pipeline(family):
    """Inpainting blends the unmasked region back to the noised image after every step: calibration captures
    the blend (mask, image latents, noise), the search replays it, and the plan applied inside the pipeline
    gives exactly the searched loss."""
    torch.manual_seed(0)
    pipe, prompt = _inpaint(family)
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., :, 8:] = 1.0
    kw = dict(image=torch.rand(1, 3, 16, 16), mask_image=mask, strength=0.8, height=16, width=16)
    prompts = [prompt() for _ in range(2)]
    calib = budcache.calibrate(pipe, prompts, 10, progress=False, **kw)
    assert all(c.blend is not None for c in calib.captures) and calib.begin_index == 2
    searched = budcache.search(calib, 3, config=SearchConfig(kicks=0), progress=False)
    errors = []
    for i, p in enumerate(prompts):

        def call():
            return pipe(
                **p, num_inference_steps=10, generator=torch.Generator().manual_seed(i), output_type="latent", **kw
            )[0]

        full = call()
        with budcache.apply(pipe, searched) as handle:
            cached = call()
            assert list(handle.summary().values()) == [{"computed": 3, "reused": 5}]
        errors.append((cached - full).pow(2).mean().item())
    assert sum(errors) / 2 == pytest.approx(searched.record.objective, rel=1e-4)
    assert searched.record.objective > 0


def test_an_unknown_inpainting_loop_is_refused_with_the_supported_ones(monkeypatch):
    from budcache.calibration import capture

    pipe, prompt = _inpaint("flux")
    monkeypatch.setattr(capture, "INPAINT_LATENTS", {"OtherInpaintPipeline": (1, 2)})
    mask = torch.ones(1, 1, 16, 16)
    mask[..., :8] = 0
    with pytest.raises(
        ValueError,
        match="FluxInpaintPipeline changes the latents between scheduler steps .* "
        "replays the inpainting loops of OtherInpaintPipeline",
    ):
        budcache.calibrate(
            pipe, [prompt()], 6, progress=False, image=torch.rand(1, 3, 16, 16), mask_image=mask, height=16, width=16
        )
