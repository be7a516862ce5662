"""Never worse than not caching: where plain B-step sampling with the pipeline's own solver is at least as good
as the best cached plan, the search says so and saves the plain B-step schedule as the plan."""

import pytest
import torch

import budcache
from budcache.cli import main
from budcache.plan import CachePlan
from budcache.search import Evaluator
from tests.fixtures.tiny import tiny_flux_pipeline


def _search(tmp_path, scheduler, budget, *extra):
    out = tmp_path / f"{scheduler}.json"
    main(
        [
            "search",
            "--model",
            "demo",
            "--steps",
            "12",
            "--budget",
            str(budget),
            "--scheduler",
            scheduler,
            "--calib",
            "8",
            "--no-progress",
            "--out",
            str(out),
            *extra,
        ]
    )
    return CachePlan.load(out)


def test_plain_sampling_that_beats_the_cached_plan_becomes_the_plan(tmp_path, capsys):
    """The demo under UniPC with repeat: 4 plain UniPC steps beat every cached 4-of-12 plan found."""
    plan = _search(tmp_path, "unipc", 4, "--rule", "repeat")
    out = capsys.readouterr()
    r = plan.record
    assert r.verdict == "plain" and plan.num_steps == plan.budget == 4 and plan.mask == [1] * 4
    assert r.objective == r.euler_objective < r.cached_objective
    assert plan.sigmas == plan.schedule and len(plan.sigmas) == 5 and plan.sigmas[-1] == 0
    assert (
        f"search: plain 4-step UniPCMultistep (loss {r.euler_objective:.4g}) is at least as good as the best "
        f"cached plan found ({r.cached_objective:.4g}): the plan runs 4 plain steps"
    ) in out.err
    main(["show", str(tmp_path / "unipc.json")])
    assert (
        "verdict plain 4-step UniPCMultistep is at least as good as caching "
        f"({r.euler_objective:.4g} vs {r.cached_objective:.4g}): this plan runs 4 plain steps"
    ) in capsys.readouterr().out


def test_a_cached_plan_that_beats_plain_sampling_says_by_how_much(tmp_path, capsys):
    plan = _search(tmp_path, "euler", 6, "--rule", "extrapolate")
    r = plan.record
    assert r.verdict == "cached" and plan.num_steps == 12 and r.cached_objective is None
    assert r.objective < r.euler_objective
    capsys.readouterr()
    main(["show", str(tmp_path / "euler.json")])
    assert list(r.plain_objectives) == ["Euler", "AB2"] and r.plain_objectives["Euler"] == r.euler_objective
    best = min(r.plain_objectives.values())
    assert r.objective < best
    assert (
        "verdict caching beats every plain 6-step solver scored on the calibration set: "
        f"{best / r.objective:.3g}x lower loss than the best"
    ) in capsys.readouterr().out


def test_a_plain_solver_the_pipeline_does_not_run_that_beats_the_plan_is_named(tmp_path, capsys, monkeypatch):
    """Forced here (plain AB2 scored 0, the own solver infinite): the cached plan is kept, since applying it beats
    the pipeline's own plain steps, and the line, the record and ``show`` name the solver that would beat it."""
    from budcache.sampling.solver import as_solver

    monkeypatch.setattr(Evaluator, "schedule_loss", lambda self, s: 0.0 if as_solver(s).name == "AB2" else float("inf"))
    plan = _search(tmp_path, "dpm", 6, "--rule", "extrapolate")
    r = plan.record
    assert r.verdict == "cached, AB2 better" and plan.num_steps == 12 and r.cached_objective is None
    assert r.plain_objectives == {"DPMSolverMultistep": float("inf"), "AB2": 0.0}
    assert (
        f"search: plain 6-step AB2 (loss 0) beats the best cached plan found ({r.objective:.4g}), which beats "
        "the pipeline's own plain 6-step DPMSolverMultistep (inf) and is kept"
    ) in capsys.readouterr().err
    main(["show", str(tmp_path / "dpm.json")])
    assert (
        f"verdict plain 6-step AB2 beats this plan (0 vs {r.objective:.4g}), which beats plain 6-step "
        "DPMSolverMultistep (inf); the pipeline's scheduler does not run AB2"
    ) in capsys.readouterr().out


@torch.no_grad()
def test_the_plain_plan_runs_exactly_its_budget_inside_the_pipeline(monkeypatch):
    """Forced here (plain scored 0): the plain plan is a valid plan whose application inside the pipeline runs
    exactly B block-stack executions and gives the pipeline's own B-step result."""
    torch.manual_seed(0)
    pipe = tiny_flux_pipeline()
    inputs = [dict(prompt_embeds=torch.randn(1, 8, 32), pooled_prompt_embeds=torch.randn(1, 32)) for _ in range(2)]
    calib = budcache.calibrate(pipe, inputs, 10, progress=False, height=16, width=16)
    monkeypatch.setattr(Evaluator, "schedule_loss", lambda self, sigmas: 0.0)
    lines = []
    plan = budcache.search(calib, 4, progress=False, announce=lines.append)
    assert plan.record.verdict == "plain" and plan.num_steps == 4 and lines[-1].startswith("search: plain 4-step Euler")

    def call():
        return pipe(
            **inputs[0],
            height=16,
            width=16,
            num_inference_steps=4,
            output_type="latent",
            generator=torch.Generator().manual_seed(0),
        ).images

    reference = call()
    calls = []
    block = pipe.transformer.transformer_blocks[0]
    counter = block.ff.register_forward_hook(lambda *a: calls.append(1))  # inside the first block (not its head)
    try:
        with budcache.apply(pipe, plan) as handle:
            latents = call()
            assert handle.summary() == {"cond": {"computed": 4, "reused": 0}}
    finally:
        counter.remove()
    assert len(calls) == 4 and torch.equal(latents, reference)
    with pytest.raises(Exception, match="4 steps"):
        with budcache.apply(pipe, plan):
            pipe(**inputs[0], height=16, width=16, num_inference_steps=10, output_type="latent")
