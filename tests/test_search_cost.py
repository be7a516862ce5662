"""The search's cost is a promise made up front: a cap in forwards per calibration sample that the
search never exceeds (counted inside a real transformer), announced before the first candidate,
recorded in the plan, and kept by a resumed search."""

import json

import pytest
import torch

import budcache
from budcache.cli import main
from budcache.plan import CachePlan
from budcache.sampling import OutputDenoiser, linear_sigmas
from budcache.search import Batch, Evaluator, SearchConfig, default_cap, search_plan
from tests.fixtures.interrupt import interrupted_after
from tests.fixtures.tiny import tiny_flux_pipeline

K = 12


def _calibration(prompts: int = 4):
    torch.manual_seed(0)
    pipe = tiny_flux_pipeline()
    inputs = [
        dict(prompt_embeds=torch.randn(1, 8, 32), pooled_prompt_embeds=torch.randn(1, 32)) for _ in range(prompts)
    ]
    return pipe, budcache.calibrate(pipe, inputs, K, progress=False, height=16, width=16)


@pytest.mark.parametrize("cap", [None, 34.0, 55.0])
@pytest.mark.parametrize("rule", ["repeat", "extrapolate", None])  # None: the search chooses the rule
def test_the_search_never_spends_more_block_stack_forwards_than_its_cap(cap, rule):
    pipe, calib = _calibration()
    calls = []
    block = pipe.transformer.transformer_blocks[-1]  # skipped on every reused step
    counter = block.attn.register_forward_hook(lambda *a: calls.append(1))
    try:
        plan = budcache.search(calib, 4, rule=rule, config=SearchConfig(max_forwards=cap), progress=False)
    finally:
        counter.remove()
    limit = default_cap(K, 4) if cap is None else cap
    searched = len(calls) - 1  # the replay check before the search: step 0 of the first prompt
    assert searched <= limit * 4  # 4 prompts, one call per step (guidance-distilled), teacher included
    assert plan.record.cap == limit and plan.record.spent * 4 == pytest.approx(searched)
    assert plan.record.forwards == searched and sum(plan.mask) == 4


def test_the_cost_is_announced_before_the_first_candidate(tmp_path, capsys):
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
            "--no-progress",
            "--out",
            str(out),
        ]
    )
    err = capsys.readouterr().err.splitlines()
    line = next(x for x in err if x.startswith("search: at most"))
    assert "at most 70 forwards per calibration sample x 8 samples = 560 forwards (teacher included)" in line
    assert "ms per forward per sample" in line and "more" in line
    record = CachePlan.load(out).record
    assert record.cap == 70 and 0 < record.spent <= 70 and record.forwards <= 560
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
            "--no-progress",
            "--effort",
            "thorough",
            "--out",
            str(tmp_path / "t.json"),
        ]
    )
    assert "search: no cap on forwards" in capsys.readouterr().err
    assert CachePlan.load(tmp_path / "t.json").record.cap is None


def test_an_interrupted_default_search_resumes_to_the_uninterrupted_plan(gmm, tmp_path):
    """The default (budgeted) search ends by its cap: a resumed run charges the replayed evaluations as
    the interrupted one did and stops where an uninterrupted run stops."""

    def evaluator():
        x = gmm.noise(48, 4)
        return Evaluator([Batch(OutputDenoiser(gmm), part) for part in x.chunk(8)], linear_sigmas(16))

    config = SearchConfig(checkpoint_every=3, seed=2)
    reference, whole = search_plan(evaluator(), 5, reuse="output", config=config, progress=False)
    ev = interrupted_after(evaluator(), 25)
    ckpt = tmp_path / "search.json"
    partial, _ = search_plan(ev, 5, reuse="output", config=config, progress=False, checkpoint=ckpt)
    assert partial.record.interrupted and 0 < len(json.loads(ckpt.read_text())["memo"])
    fresh = evaluator()
    resumed, again = search_plan(fresh, 5, reuse="output", config=config, progress=False, checkpoint=ckpt, resume=True)
    assert resumed.mask == reference.mask and resumed.record.objective == reference.record.objective
    assert again.history == whole.history and resumed.record.spent == reference.record.spent
    assert reference.record.spent <= default_cap(16, 5)


def test_a_named_surrogate_start_is_charged_and_shown(tmp_path, capsys):
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
            "--no-progress",
            "--rule",
            "extrapolate",
            "--start",
            "uniform",
            "surrogate",
            "--out",
            str(out),
        ]
    )
    record = CachePlan.load(out).record
    assert record.effort == "custom" and record.reused_calls > 0 and 0 < record.spent <= record.cap == 70
    capsys.readouterr()
    main(["show", str(out)])
    assert f"({record.reused_calls} reused calls for the teacher surrogate among them)" in capsys.readouterr().out


def test_masks_scored_before_the_cap_count_when_it_is_reached_part_way(gmm):
    """A cap reached inside a batch of evaluations keeps the best of the masks scored before it: the plan's
    loss is the lowest loss the evaluator scored on every sample."""
    for cap in range(30, 121, 3):
        evaluate = Evaluator(
            [Batch(OutputDenoiser(gmm), part) for part in gmm.noise(16, 4).split(4)], linear_sigmas(16)
        )
        plan, result = search_plan(
            evaluate, 5, reuse="output", config=SearchConfig(max_forwards=cap, sweep=False), progress=False
        )  # steepest descent: every neighbour scored in one call
        assert result.loss == min(evaluate.memo.values())
