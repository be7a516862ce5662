"""Predictive reuse: extrapolating the cache in sigma, searched with the mask, and plain solvers."""

import pytest
import torch

from budcache.hooks.stack import stack_hooks
from budcache.plan import CachePlan, PlanError
from budcache.sampling import OutputDenoiser, ResidualDenoiser, euler, linear_sigmas, predict, sample
from budcache.sampling.plain import SCHEDULERS, adams_bashforth2, plain_solvers, scheduler_sample
from budcache.search import Batch, Evaluator, SearchConfig, decode, encode, run_search, search_plan


def test_predict_is_exact_for_polynomials_and_falls_back():
    a, b, c = torch.tensor(1.0), torch.tensor(-2.0), torch.tensor(3.0)
    lin = lambda s: a + b * s  # noqa: E731
    quad = lambda s: a + b * s + c * s * s  # noqa: E731
    hist = [(s, quad(s)) for s in (0.9, 0.7, 0.6)]
    assert torch.allclose(predict([(s, lin(s)) for s in (0.9, 0.7)], 0.3, "extrapolate"), lin(0.3))
    assert torch.allclose(predict(hist, 0.3, "extrapolate2"), quad(0.3))
    assert torch.equal(predict(hist, 0.3, "repeat"), quad(0.6))
    assert torch.equal(predict(hist[:1], 0.3, "extrapolate"), quad(0.9))  # too few: repeat
    assert torch.allclose(
        predict(hist[:2], 0.3, "extrapolate2"), hist[1][1] + (0.3 - 0.7) / (0.7 - 0.9) * (hist[1][1] - hist[0][1])
    )


def test_output_extrapolation_matches_a_hand_written_loop(gmm):
    sigmas, mask = linear_sigmas(8), [1, 1, 0, 0, 1, 0, 1, 0]
    x = gmm.noise(16, 0)
    y, hist = x.clone(), []
    for k, m in enumerate(mask):
        if m:
            v = gmm(y, sigmas[k])
            hist.append((sigmas[k], v))
        elif len(hist) >= 2:
            (s0, v0), (s1, v1) = hist[-2:]
            v = v1 + (sigmas[k] - s1) / (s1 - s0) * (v1 - v0)
        else:
            v = hist[-1][1]
        y = y + (sigmas[k + 1] - sigmas[k]) * v
    assert torch.allclose(sample(OutputDenoiser(gmm), x, sigmas, mask, "extrapolate"), y, atol=1e-6)


@torch.no_grad()
@pytest.mark.parametrize("rule", ["extrapolate", "extrapolate2"])
def test_residual_extrapolation_keeps_exactly_budget_executions(tiny_flux, rule):
    sigmas, mask = linear_sigmas(10), [1, 1, 0, 1, 0, 0, 1, 0, 0, 1]
    with stack_hooks(tiny_flux.transformer) as stack:
        den = ResidualDenoiser(tiny_flux.velocity, stack)
        out = sample(den, tiny_flux.noise, sigmas, mask, rule)
        assert den.executions == sum(mask)
        repeat = sample(den, tiny_flux.noise, sigmas, mask, "repeat")
        full = sample(den, tiny_flux.noise, sigmas, [1] * 10, rule)
    assert not torch.allclose(out, repeat, atol=1e-5)
    assert torch.equal(full, euler(tiny_flux.velocity, tiny_flux.noise, sigmas))


def test_per_step_rules_score_what_the_sampler_runs(gmm):
    x = gmm.noise(24, 2)
    mask = [1, 1, 0, 0, 1, 0, 0, 1, 0, 0]
    rules = [
        "repeat",
        "repeat",
        "extrapolate",
        "repeat",
        "repeat",
        "extrapolate2",
        "extrapolate",
        "repeat",
        "extrapolate",
        "repeat",
    ]
    ev = Evaluator([Batch(OutputDenoiser(gmm), x)], linear_sigmas(10), rules_in_play=("extrapolate2",))
    schedule = encode(mask, rules)
    assert decode(schedule)[0] == mask
    teacher = euler(gmm, x, linear_sigmas(10))
    direct = float((sample(OutputDenoiser(gmm), x, linear_sigmas(10), mask, rules) - teacher).pow(2).mean())
    assert ev(schedule) == pytest.approx(direct, rel=1e-5)
    assert ev(mask) != ev(schedule)  # a plain mask is scored with the evaluator's rule (repeat)


def test_extrapolation_beats_repetition_on_a_smooth_flow(gmm):
    x = gmm.noise(32, 4)
    rep = Evaluator([Batch(OutputDenoiser(gmm), x)], linear_sigmas(16))
    ext = Evaluator([Batch(OutputDenoiser(gmm), x)], linear_sigmas(16), rule="extrapolate")
    cfg = SearchConfig(strategy="classic", iterations=80, seed=0)
    assert run_search(ext, 6, cfg, progress=False).loss < run_search(rep, 6, cfg, progress=False).loss


def test_joint_rule_search_returns_per_step_rules(gmm):
    x = gmm.noise(32, 4)
    ev = Evaluator([Batch(OutputDenoiser(gmm), x)], linear_sigmas(12), rules_in_play=("extrapolate", "extrapolate2"))
    r = run_search(
        ev,
        5,
        SearchConfig(strategy="classic", iterations=80, rules=("repeat", "extrapolate", "extrapolate2")),
        progress=False,
    )
    assert len(r.rules) == 12 and sum(r.mask) == 5
    assert r.loss == ev(encode(r.mask, r.rules))
    plan, _ = search_plan(
        ev,
        5,
        reuse="output",
        config=SearchConfig(strategy="classic", iterations=40, rules=("repeat", "extrapolate")),
        progress=False,
    )
    assert plan.step_rules == (plan.rules or [plan.rule] * 12)


def test_a_predictive_plan_never_validates_worse_than_repeat(gmm):
    x = gmm.noise(16, 5)
    ev = Evaluator([Batch(OutputDenoiser(gmm), x)], linear_sigmas(10), rule="extrapolate")

    def exploding(schedule):  # validation where extrapolation diverges
        return float("inf") if any(c > 2 for c in schedule) else 1.0

    plan, _ = search_plan(
        ev,
        4,
        reuse="output",
        config=SearchConfig(strategy="classic", iterations=30),
        validation=exploding,
        progress=False,
    )
    assert plan.rule == "repeat" and plan.rules is None
    assert plan.record.objective == plan.record.repeat_objective
    assert plan.record.validation_objective == float("inf")
    kept, _ = search_plan(ev, 4, reuse="output", config=SearchConfig(strategy="classic", iterations=30), progress=False)
    assert kept.rule == "extrapolate" and kept.record.objective <= kept.record.repeat_objective * 1.000001


def test_plan_rule_fields_are_validated(tmp_path):
    plan = CachePlan(
        num_steps=4,
        budget=2,
        mask=[1, 0, 1, 0],
        rule="extrapolate",
        rules=["repeat", "extrapolate2", "repeat", "extrapolate"],
    )
    assert CachePlan.load(plan.save(tmp_path / "p.json")) == plan
    with pytest.raises(PlanError, match="field 'rule'"):
        CachePlan(num_steps=4, budget=2, mask=[1, 0, 1, 0], rule="taylor")
    with pytest.raises(PlanError, match="field 'rules'"):
        CachePlan(num_steps=4, budget=2, mask=[1, 0, 1, 0], rules=["repeat"] * 3)
    with pytest.raises(PlanError, match="unknown rule"):
        CachePlan(num_steps=4, budget=2, mask=[1, 0, 1, 0], rules=["repeat", "x", "repeat", "repeat"])


def test_plain_solvers_use_exactly_nfe_calls_and_ab2_is_second_order(gmm):
    calls = []
    counted = lambda x, s: (calls.append(s), gmm(x, s))[1]  # noqa: E731
    x = gmm.noise(16, 6)
    for make in SCHEDULERS.values():
        calls.clear()
        scheduler_sample(make(), counted, x, 7)
        assert len(calls) == 7
    assert set(plain_solvers(gmm, x, 5)) >= {"plain 5-step Euler", "plain 5-step AB2", "UniPC (flow) 5"}
    ref = euler(gmm, x, linear_sigmas(400))
    err = lambda f, n: float((f(gmm, x, linear_sigmas(n)) - ref).pow(2).mean().sqrt())  # noqa: E731
    assert err(adams_bashforth2, 40) / err(adams_bashforth2, 80) > 3.0
    assert err(euler, 40) / err(euler, 80) < 2.5
