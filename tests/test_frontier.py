"""`budcache frontier`: one plan per budget in one run, warm-started from the neighbour."""

import json

import pytest

from budcache.cli import main
from budcache.errors import SearchError
from budcache.plan import CachePlan
from budcache.planset import PlanSet
from budcache.search import SearchConfig, grow, run_search


def test_grow_fills_the_middle_of_the_longest_gap():
    assert grow([1, 0, 0, 0, 0, 1, 0]) == [1, 0, 1, 0, 0, 1, 0]
    assert grow([1, 0, 1, 0, 0, 0]) == [1, 0, 1, 0, 1, 0]
    with pytest.raises(ValueError):
        grow([1, 1])


def test_a_bad_start_mask_is_refused(gmm):
    from tests.test_search import evaluator

    with pytest.raises(SearchError, match="start mask"):
        run_search(
            evaluator(gmm), 3, SearchConfig(strategy="classic", iterations=5), progress=False, start=[1, 1, 0, 0]
        )


def test_cli_frontier(tmp_path):
    out = tmp_path / "fr"
    main(
        [
            "--threads",
            "1",
            "frontier",
            "--steps",
            "8",
            "--budgets",
            "2..5",
            "--calib",
            "4",
            "--held-out",
            "6",
            "--iterations",
            "10",
            "--starts",
            "1",
            "--no-progress",
            "--out",
            str(out),
        ]
    )
    rows = json.loads((out / "frontier.json").read_text())["rows"]
    assert [r["budget"] for r in rows] == [2, 3, 4, 5] and (out / "frontier.png").exists()
    for r in rows:
        plan = CachePlan.load(out / f"plan_B{r['budget']}.json")
        assert sum(plan.mask) == r["budget"] and plan.strip == r["mask"]
        assert (
            r["budcache"] > 10 and r["plain Euler"] > 10 and r["plain AB2"] > 10 and r["plain AB2"] != r["plain Euler"]
        )
    plans = PlanSet.load(out / "plans.json")
    assert [p.budget for p in plans] == [2, 3, 4, 5] and plans.plans[0] == CachePlan.load(out / "plan_B2.json")


def test_cli_frontier_under_a_predictive_rule(tmp_path):
    """``--rule extrapolate``: every budget is searched under it, and the plans and the uniform mask are
    scored under it (the same uniform mask scores otherwise under repeat)."""
    rows = {}
    for rule in ("repeat", "extrapolate"):
        out = tmp_path / rule
        main(
            [
                "--threads",
                "1",
                "frontier",
                "--steps",
                "8",
                "--budgets",
                "3..4",
                "--calib",
                "4",
                "--held-out",
                "6",
                "--iterations",
                "10",
                "--starts",
                "1",
                "--rule",
                rule,
                "--no-progress",
                "--out",
                str(out),
            ]
        )
        rows[rule] = json.loads((out / "frontier.json").read_text())["rows"]
        assert all(
            r["rule"] == rule and CachePlan.load(out / f"plan_B{r['budget']}.json").rule == rule for r in rows[rule]
        )
    for repeat, extrapolate in zip(rows["repeat"], rows["extrapolate"]):
        assert extrapolate["uniform mask"] != pytest.approx(repeat["uniform mask"], abs=0.01)
        assert extrapolate["plain Euler"] == pytest.approx(repeat["plain Euler"])


def test_each_budget_searches_from_the_grown_plan_and_the_efforts_own_starts(monkeypatch):
    """After the first budget, the search starts from the previous plan grown by one step, then from the
    effort's own starts (one start more than the effort has)."""
    from types import SimpleNamespace

    from budcache.plan import SearchRecord, uniform_mask
    from budcache.search import frontier

    seen = []

    def search(source, b, config, start, **kwargs):
        seen.append((b, config.starts, config.start, start))
        return CachePlan(num_steps=8, budget=b, mask=uniform_mask(8, b), record=SearchRecord(objective=1.0)), None

    monkeypatch.setattr(frontier, "source_evaluator", lambda *a, **k: SimpleNamespace(evaluations=0, forwards=0))
    monkeypatch.setattr(frontier, "search_source", search)
    effort = SearchConfig(starts=2, start=("uniform", "endpoints"))
    frontier.search_frontier(None, [2, 3, 5], effort, progress=False)
    assert seen[0] == (2, 2, ("uniform", "endpoints"), None)
    assert seen[1] == (3, 3, ("uniform", "uniform", "endpoints"), grow(uniform_mask(8, 2)))
    assert seen[2] == (5, 2, ("uniform", "endpoints"), None)  # no neighbour at B=4
