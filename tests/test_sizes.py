"""One plan for several sizes: time shifts between schedules, calibration at several sizes, plans that record the
shifts they cover and refuse the others, plan sets keyed by size, on the tiny FluxPipeline (dynamic shifting) and the
demo model (static shifts)."""

import dataclasses
import math

import numpy as np
import pytest
import torch

import budcache
from budcache.errors import CalibrationError, PlanError
from budcache.plan import CachePlan
from budcache.planset import PlanSet
from budcache.sampling.shift import relative_shift, shift_sigmas
from budcache.search import SearchConfig
from tests.fixtures.tiny import tiny_flux_pipeline

K, B = 6, 3
SIZES = [(16, 16), (16, 32), (32, 32)]
QUICK = SearchConfig(strategy="classic", iterations=8, starts=1, kicks=0)


def _inputs(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        dict(prompt_embeds=torch.randn(1, 8, 32, generator=g), pooled_prompt_embeds=torch.randn(1, 32, generator=g))
        for _ in range(n)
    ]


def _run(pipe, size, steps=K, seed=0):
    h, w = size
    return pipe(
        **_inputs(1, seed)[0],
        height=h,
        width=w,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(seed),
        output_type="latent",
    ).images


def _schedule(pipe, size, steps=K):
    """The sigmas the pipeline sets for ``size`` (its mu from the token count), from a plain run of a twin."""
    twin = tiny_flux_pipeline(pipe.transformer)
    _run(twin, size, steps)
    return twin.scheduler.sigmas.tolist()


@pytest.fixture(scope="module")
def pipe():
    return tiny_flux_pipeline()


@pytest.fixture(scope="module")
def mixed(pipe):
    """A calibration at the smallest and the largest size and the plan searched on it."""
    calib = budcache.calibrate(pipe, _inputs(), K, sizes=[SIZES[0], SIZES[2]], progress=False)
    return calib, budcache.search(calib, B, rule="repeat", config=QUICK, progress=False)


def test_shift_between_resolutions_is_one_factor(pipe):
    """FLUX's schedules at two resolutions differ by exp(mu2 - mu1) on every step's odds; other step counts and
    schedules that are no shift are told apart."""
    small, large = _schedule(pipe, SIZES[0]), _schedule(pipe, SIZES[2])
    assert not np.allclose(small, large)
    factor = relative_shift(large, small)
    assert factor is not None and factor > 1
    assert shift_sigmas(small, factor) == pytest.approx(large, abs=1e-6)
    assert relative_shift(small, small) == 1.0 and relative_shift(small, large) == pytest.approx(1 / factor)
    assert relative_shift(_schedule(pipe, SIZES[0], K + 1), small) is None
    bent = list(small)
    bent[2] += 0.01
    assert relative_shift(bent, small) is None


def test_calibrate_at_several_sizes(pipe, mixed):
    """Every prompt at every size, each capture with its own schedule; per-prompt sizes work too."""
    calib, _ = mixed
    assert [c.size for c in calib.captures] == ["16x16", "16x16", "32x32", "32x32"]
    assert calib.sizes == ["16x16", "32x32"] and any(f != 1.0 for f in calib.shifts())  # more than one schedule
    shifts = calib.shifts()
    assert shifts[:2] == [1.0, 1.0] and shifts[2] == shifts[3] > 1
    assert calib.sigmas == calib.captures[0].sigmas and calib.captures[2].sigmas == pytest.approx(
        _schedule(pipe, SIZES[2]), abs=1e-6
    )
    per_prompt = [dict(p, height=h, width=w) for p, (h, w) in zip(_inputs(3), SIZES)]
    own = budcache.calibrate(pipe, per_prompt, K, progress=False)
    assert own.sizes == ["16x16", "16x32", "32x32"]
    assert own.shifts()[0] == 1.0 and 1 < own.shifts()[1] < own.shifts()[2]


def test_sizes_whose_schedules_are_no_shift_are_refused(pipe):
    """A second call on a schedule that is not a shift of the first's (its own sigmas) is refused."""
    first, second = _inputs(2)
    with pytest.raises(CalibrationError, match="not a time shift"):
        budcache.calibrate(
            pipe, [first, dict(second, sigmas=[1.0, 0.9, 0.5, 0.4, 0.2, 0.1])], K, progress=False, height=16, width=16
        )


def test_mixed_plan_records_its_range_and_serves_every_size_with_exactly_b(pipe, mixed, tmp_path):
    """The plan covers the shifts of its sizes (and the sizes between); at each it runs B of K steps, on the
    call's own schedule (the mask by index); the plan survives a file round trip."""
    calib, plan = mixed
    assert plan.shifts == [1.0, pytest.approx(calib.shifts()[2])]
    assert plan.record.sizes == ["16x16", "32x32"] and "sizes   16x16 (loss " in plan.describe()
    losses = plan.record.size_objectives  # the plan's loss at each size; their mean over the samples is the objective
    assert set(losses) == {"16x16", "32x32"} and sum(losses.values()) / 2 == pytest.approx(plan.record.objective)
    loaded = CachePlan.load(plan.save(tmp_path / "plan.json"))
    assert loaded == plan
    schedules = [_schedule(pipe, size) for size in SIZES]
    with budcache.apply(pipe, loaded) as handle:
        for size, schedule in zip(SIZES, schedules):  # 16x32 lies between the calibrated sizes
            _run(pipe, size)
            assert handle.summary() == {"cond": {"computed": B, "reused": K - B}}
            assert pipe.scheduler.sigmas.tolist() == pytest.approx(schedule, abs=1e-6)


def test_calls_outside_the_range_are_refused(pipe, mixed):
    """A size whose shift lies outside the plan's range is refused before any forward, naming the sizes searched
    and how to add the size; a single-size plan refuses every other size the same way."""
    _, plan = mixed
    forwards = []
    hook = pipe.transformer.register_forward_pre_hook(lambda *a: forwards.append(1))
    try:
        with budcache.apply(pipe, plan):
            for size in ((8, 8), (64, 64)):
                with pytest.raises(PlanError, match=r"searched on sizes 16x16, 32x32 .*sizes=\[\(height, width\)"):
                    _run(pipe, size)
        assert forwards == []
    finally:
        hook.remove()
    single = dataclasses.replace(plan, shifts=None, record=None)
    with budcache.apply(pipe, single), pytest.raises(PlanError, match="searched on one schedule"):
        _run(pipe, SIZES[1])


def test_stage2_sigmas_are_shifted_with_the_call(pipe, mixed):
    """A plan with its own sigmas (stage 2) runs them shifted by the call's factor from the plan's schedule."""
    calib, plan = mixed
    own = [plan.schedule[0], *[s * 0.97 for s in plan.schedule[1:-1]], 0.0]
    aligned = dataclasses.replace(plan, sigmas=own)
    factor = calib.shifts()[2]
    with budcache.apply(pipe, aligned) as handle:
        _run(pipe, SIZES[2])
        assert handle.summary()["cond"]["computed"] == B
        assert pipe.scheduler.sigmas.tolist() == pytest.approx(shift_sigmas(own, factor), abs=1e-6)
        assert pipe.scheduler.timesteps.tolist() == pytest.approx(
            [1000 * s for s in shift_sigmas(own, factor)[:-1]], rel=1e-5
        )


def test_plan_set_keyed_by_size(pipe):
    """Single-size plans of one K and B at three sizes in one set: each call gets its size's plan (exactly B),
    a size none covers is refused, and plans covering the same size are refused in one set."""
    plans = []
    for i, size in enumerate(SIZES):
        calib = budcache.calibrate(pipe, _inputs(1, seed=i), K, progress=False, height=size[0], width=size[1])
        plans.append(budcache.search(calib, B, rule="repeat", config=QUICK, progress=False))
    served = PlanSet(plans)
    assert len(served) == 3 and served.describe().count("one (sigma[1]") == 3
    with budcache.apply(pipe, served) as handle:
        for size, plan in zip(SIZES, plans):
            _run(pipe, size)
            assert handle.plan is plan and handle.summary() == {"cond": {"computed": B, "reused": K - B}}
        with pytest.raises(PlanError, match=r"none of the 3 plans for K=6 B=3 covers .* they serve one \(sigma"):
            _run(pipe, (64, 64))
    with pytest.raises(PlanError, match="cover the same schedule"):
        PlanSet([plans[0], dataclasses.replace(plans[0], rule="extrapolate")])


def test_one_size_tools_refuse_a_mixed_calibration(pipe, mixed):
    calib, plan = mixed
    with pytest.raises(CalibrationError, match="align runs on one size"):
        budcache.align(plan, calib)
    from budcache.calibration import pipeline_source
    from budcache.evaluation.compare import compare

    with pipeline_source(calib) as source, pytest.raises(CalibrationError, match="compare runs on one size"):
        compare(source, [B])


def test_shifts_field_is_validated():
    base = dict(num_steps=4, budget=2, mask=[1, 0, 1, 0], schedule=[1.0, 0.75, 0.5, 0.25, 0.0])
    assert CachePlan(**base, shifts=[0.5, 2.0]).shift_of(shift_sigmas(base["schedule"], 1.5)) == pytest.approx(1.5)
    assert CachePlan(**base, shifts=[0.5, 2.0]).shift_of(shift_sigmas(base["schedule"], 2.5)) is None
    for bad in ([2.0, 3.0], [0.5], [0.0, 1.0], [1.0, math.inf]):
        with pytest.raises(PlanError, match="shifts"):
            CachePlan(**base, shifts=bad)
    with pytest.raises(PlanError, match="needs field 'schedule'"):
        CachePlan(num_steps=4, budget=2, mask=[1, 0, 1, 0], shifts=[1.0, 2.0])


def test_demo_at_several_shifts():
    """The demo's calibration split across shifts: the plan records their range and scores on each."""
    from budcache.demo.problem import demo_source
    from budcache.search.plan_search import search_source

    with demo_source(12, 8, held_out=0, shift=(1.0, 3.0)) as source:
        batches = source.batches("calib")
        assert sorted({b.shift for b in batches}) == [1.0, 3.0]
        plan, _ = search_source(source, 4, config=QUICK, progress=False)
    assert plan.shifts == [1.0, 3.0] and plan.record.sizes == ["shift 1", "shift 3"]
    assert set(plan.record.size_objectives) == {"shift 1", "shift 3"}


def test_search_at_several_sizes_from_the_command_line(tmp_path, capsys):
    """``budcache search --pipeline ... --sizes 16x16 32x32``: one plan that serves both sizes and the one between;
    ``--sizes`` beside ``--height`` and a malformed size are refused while parsing."""
    from diffusers import DiffusionPipeline

    from budcache.cli import main
    from tests.fixtures.tiny_text import quiet, save_tiny_flux_pipeline

    folder = save_tiny_flux_pipeline(tmp_path / "flux")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red square\na blue circle\n")
    out = tmp_path / "plan.json"
    common = (
        f"search --pipeline {folder} --prompts {prompts} --budget {B} --steps {K} --call max_sequence_length=16 "
        f"--iterations 8 --starts 1 --kicks 0 --no-progress --out {out}"
    ).split()
    with pytest.raises(SystemExit, match="drop --height"):
        main([*common, "--sizes", "16x16", "32x32", "--height", "16"])
    with pytest.raises(SystemExit):
        main([*common, "--sizes", "16by16"])
    assert "HEIGHTxWIDTH" in capsys.readouterr().err
    main([*common, "--sizes", "16x16", "32x32"])
    plan = CachePlan.load(out)
    assert plan.record.sizes == ["16x16", "32x32"] and plan.shifts[0] == 1.0 and plan.shifts[1] > 1
    with quiet():
        pipe = DiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    with budcache.apply(pipe, plan) as handle:
        for h, w in SIZES:
            pipe(
                "a green triangle",
                num_inference_steps=K,
                height=h,
                width=w,
                max_sequence_length=16,
                output_type="latent",
            )
            assert handle.summary() == {"cond": {"computed": B, "reused": K - B}}


def test_a_plan_of_several_sizes_on_one_schedule_refuses_another_in_one_line():
    """Sizes with the same schedule (a static shift, as Wan's) record the sizes and no shift range; a call on
    another schedule is refused with a PlanError naming them."""
    schedule = [1.0, 0.75, 0.5, 0.25, 0.0]
    plan = CachePlan(
        num_steps=4,
        budget=2,
        mask=[1, 0, 1, 0],
        schedule=schedule,
        record=budcache.SearchRecord(objective=0.1, sizes=["480x832", "720x1280"]),
    )
    with pytest.raises(PlanError, match=r"searched on sizes 480x832, 720x1280 \(one schedule\)"):
        plan.check_schedule(shift_sigmas(schedule, 2.0))
