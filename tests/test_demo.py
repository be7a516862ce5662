"""The shipped demo model, the CLI and the main job, end to end."""

import json
import subprocess
import sys

import pytest
import torch
from diffusers import FluxTransformer2DModel

from budcache.cli import main
from budcache.demo.data import accuracy, digit_classifier, load_digits_16
from budcache.demo.model import WEIGHTS, pack, unpack
from budcache.demo.problem import demo_denoisers, demo_inputs
from budcache.plan import CachePlan
from budcache.sampling import euler, linear_sigmas, sample


def test_weights_are_small_and_the_model_is_a_real_flux_transformer(demo_model):
    assert WEIGHTS.stat().st_size < 6 * 2**20
    assert isinstance(demo_model.transformer, FluxTransformer2DModel)


def test_pack_unpack_roundtrip():
    images, _, _ = load_digits_16()
    assert torch.equal(unpack(pack(images[:5])), images[:5])


@torch.no_grad()
def test_generated_digits_are_recognizable(demo_model):
    """An SVC trained on real digits labels generated samples with their conditioning class."""
    noise, labels = demo_inputs(100, 1234)
    x = euler(lambda x, s: demo_model(x, torch.tensor(s), labels), noise, linear_sigmas(28))
    assert accuracy(digit_classifier(), unpack(x), labels) >= 0.9


@torch.no_grad()
def test_demo_plan_runs_exactly_budget_block_stacks(demo_model):
    noise, labels = demo_inputs(10, 0)
    mask = [1, 0, 1, 0, 0, 1, 0, 0, 1, 0, 1, 0]
    with demo_denoisers(demo_model, "residual") as make:
        den = make(labels)
        out = sample(den, noise, linear_sigmas(12), mask)
        assert den.executions == 5
    full = euler(lambda x, s: demo_model(x, torch.tensor(s), labels), noise, linear_sigmas(12))
    assert 0 < float((out - full).pow(2).mean()) < 0.05


def test_cli_search_and_show(tmp_path, capsys):
    out = tmp_path / "plan.json"
    main(
        [
            "search",
            "--model",
            "demo",
            "--steps",
            "10",
            "--budget",
            "4",
            "--calib",
            "8",
            "--iterations",
            "20",
            "--starts",
            "1",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    plan = CachePlan.load(out)
    assert plan.num_steps == 10 and plan.budget == 4 and plan.reuse == "residual"
    assert plan.model["class"] == "FluxTransformer2DModel"
    assert plan.record.objective <= plan.record.uniform_objective
    assert (tmp_path / "plan.history.png").stat().st_size > 1000
    capsys.readouterr()
    main(["show", str(out), "--png", str(tmp_path / "plan.png")])
    shown = capsys.readouterr().out
    assert plan.strip in shown and "4/10" in shown and "ideal speedup 2.50x" in shown
    assert (tmp_path / "plan.png").stat().st_size > 1000


@pytest.mark.parametrize(
    "args, message",
    [
        (["search", "--budget", "30", "--steps", "28", "--out", "x.json"], "--budget 30 exceeds --steps 28"),
        (["search", "--model", "flux", "--budget", "3", "--out", "x.json"], "--pipeline PATH_OR_ID"),
    ],
)
def test_cli_refuses_bad_input(args, message):
    with pytest.raises(SystemExit, match=message):
        main(args)


def test_cli_show_refuses_a_corrupt_plan(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema_version": 1, "num_steps": 4, "budget": 2, "mask": [1, 1, 1, 0]}))
    r = subprocess.run([sys.executable, "-m", "budcache.cli", "show", str(bad)], capture_output=True, text=True)
    assert r.returncode != 0 and "field 'mask'" in r.stderr and "budget" in r.stderr


def test_demo_main_job_end_to_end(tmp_path, capsys):
    main(
        [
            "demo",
            "--out",
            str(tmp_path),
            "--budgets",
            "3",
            "5",
            "--steps",
            "10",
            "--calib",
            "8",
            "--held-out",
            "20",
            "--iterations",
            "20",
            "--starts",
            "1",
            "--kicks",
            "1",
            "--no-progress",
        ]
    )
    table = capsys.readouterr().out
    assert "plain 3-step Euler" in table and "uniform mask" in table
    results = json.loads((tmp_path / "results.json").read_text())
    assert sorted({r["budget"] for r in results}) == [3, 5]
    for b in (3, 5):
        at = {(r["method"], r["rule"]): r for r in results if r["budget"] == b}
        methods = {m for m, _ in at}
        assert {
            "plan (repeat)",
            f"plain {b}-step Euler",
            f"plain {b}-step AB2",
            f"UniPC (flow) {b}",
            f"DPM-Solver++ 2M (flow) {b}",
        } <= methods
        assert ("uniform mask", "repeat") in at and ("uniform mask", "extrapolate") in at
        plans = [r for (m, _), r in at.items() if m.startswith("plan (")]
        assert any(r["method"].startswith("plan (extrapolate") for r in plans)
        assert all(r["nfe_min"] == r["nfe_max"] == b for r in plans)  # block-stack executions, measured
        assert at["plan (repeat)", "repeat"]["speedup"] > 1.0
    for name in ["plan_B3_repeat.json", "plan_B5_extrapolate.png", "samples.png", "search_history.png", "table.txt"]:
        assert (tmp_path / name).stat().st_size > 0


def test_cli_search_with_predictive_rules(tmp_path, capsys):
    out = tmp_path / "plan.json"
    main(
        [
            "search",
            "--steps",
            "10",
            "--budget",
            "4",
            "--calib",
            "8",
            "--iterations",
            "15",
            "--starts",
            "1",
            "--kicks",
            "0",
            "--rule",
            "extrapolate",
            "--search-rules",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    plan = CachePlan.load(out)
    r = plan.record
    assert r.validation_objective is not None and r.validation_repeat_objective is not None
    if r.validation_objective <= r.validation_repeat_objective:
        assert plan.rules is not None and len(plan.rules) == 10
    else:
        assert plan.rule == "repeat" and plan.rules is None
    assert "rule" in capsys.readouterr().out


def test_show_prints_per_step_rules(tmp_path, capsys):
    plan = CachePlan(
        num_steps=6,
        budget=3,
        mask=[1, 0, 1, 0, 0, 1],
        rule="repeat",
        rules=["repeat", "extrapolate", "repeat", "extrapolate2", "repeat", "repeat"],
    )
    main(["show", str(plan.save(tmp_path / "p.json"))])
    out = capsys.readouterr().out
    assert "rules   #/#^.#" in out and "rule per step" in out


def test_cli_compare_saved_plans(tmp_path, capsys):
    a = CachePlan(num_steps=10, budget=4, mask=[1, 0, 1, 0, 0, 1, 0, 0, 1, 0], reuse="output", sigmas=linear_sigmas(10))
    b = CachePlan(
        num_steps=10,
        budget=4,
        mask=[1, 1, 0, 0, 1, 0, 0, 1, 0, 0],
        reuse="residual",
        rule="extrapolate",
        sigmas=linear_sigmas(10),
    )
    main(
        [
            "compare",
            str(a.save(tmp_path / "a.json")),
            str(b.save(tmp_path / "b.json")),
            "--held-out",
            "10",
            "--out",
            str(tmp_path / "cmp"),
        ]
    )
    results = json.loads((tmp_path / "cmp" / "results.json").read_text())
    assert {r["budget"] for r in results} == {4}
    assert {"plan (a)", "plan (b)", "plain 4-step AB2"} <= {r["method"] for r in results}
    assert all(r["nfe_min"] == r["nfe_max"] == 4 for r in results if r["method"].startswith("plan ("))
    wrong = CachePlan(num_steps=10, budget=4, mask=a.mask, model={"class": "SD3Transformer2DModel", "fingerprint": "x"})
    with pytest.raises(SystemExit, match="searched for a SD3Transformer2DModel"):
        main(["compare", str(wrong.save(tmp_path / "w.json")), "--out", str(tmp_path / "w")])


def test_the_demo_schedule_shifts_like_flux_and_sd3():
    """``shift`` s maps each sigma x to s*x / (1 + (s-1)*x): 1 leaves the linear schedule as it is; other
    schedulers refuse it."""
    import pytest

    from budcache.demo.problem import demo_source
    from budcache.sampling import linear_sigmas

    with demo_source(8, 2, held_out=0) as plain, demo_source(8, 2, held_out=0, shift=3.0) as shifted:
        assert list(plain.sigmas) == linear_sigmas(8)
        assert shifted.sigmas[0] == 1.0 and shifted.sigmas[-1] == 0.0
        assert shifted.sigmas[4] == pytest.approx(3 * 0.5 / (1 + 2 * 0.5))
    with pytest.raises(ValueError, match="shift applies to the euler scheduler"):
        with demo_source(8, 2, held_out=0, scheduler="unipc", shift=3.0):
            pass
