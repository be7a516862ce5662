import json

import pytest

from budcache.plan import CachePlan, PlanError, SearchRecord, model_identity, uniform_mask
from budcache.sampling import linear_sigmas


def make_plan(**kw):
    d = dict(num_steps=8, budget=3, mask=[1, 0, 0, 1, 0, 0, 1, 0], reuse="output", sigmas=linear_sigmas(8))
    d.update(kw)
    return CachePlan(**d)


def test_roundtrip(tmp_path):
    plan = make_plan(model={"class": "X", "fingerprint": "abc"}, record=SearchRecord(objective=0.5, evaluations=7))
    path = plan.save(tmp_path / "p.json")
    back = CachePlan.load(path)
    assert back == plan
    assert json.loads(path.read_text())["schema_version"] == 1
    assert back.strip == "#..#..#."
    assert back.ideal_speedup == pytest.approx(8 / 3)
    assert [p.name for p in tmp_path.iterdir()] == ["p.json"]  # no temp file left behind
    timed = make_plan(sigmas=linear_sigmas(8), model_sigmas=[0.9 - 0.1 * i for i in range(8)])
    assert CachePlan.load(timed.save(tmp_path / "t.json")) == timed and "decoupled" in timed.describe()


@pytest.mark.parametrize(
    "change, field",
    [
        (dict(budget=9), "budget"),
        (dict(mask=[0, 1, 0, 1, 0, 0, 1, 0]), "mask"),
        (dict(mask=[1, 1, 0, 1, 0, 0, 1, 0]), "mask"),
        (dict(mask=[1, 0, 0, 1, 0, 0, 1]), "mask"),
        (dict(mask=[1, 0, 0, 2, 0, 0, 1, 0]), "mask"),
        (dict(sigmas=linear_sigmas(7)), "sigmas"),
        (dict(sigmas=[1.0, 0.9, 0.95, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0]), "sigmas"),
        (dict(sigmas=[1.0, 0.9, 0.8, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05]), "sigmas"),
        (dict(sigmas=[1.0, 0.9, float("nan"), 0.5, 0.4, 0.3, 0.2, 0.1, 0.0]), "sigmas"),
        (dict(reuse="blocks"), "reuse"),
        (dict(sigmas=None, model_sigmas=[0.5] * 8), "model_sigmas' needs field 'sigmas'"),
        (dict(sigmas=linear_sigmas(8), model_sigmas=[0.5] * 7), "model_sigmas"),
        (dict(sigmas=linear_sigmas(8), model_sigmas=[0.5] * 7 + [0.0]), "model_sigmas"),
        (dict(sigmas=linear_sigmas(8), model_sigmas=[0.5] * 8, boundary_ratio=0.9), "two experts"),
    ],
)
def test_invalid_plans_name_the_field(change, field):
    with pytest.raises(PlanError, match=field):
        make_plan(**change)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.update(schema_version=99), "schema_version"),
        (lambda d: d.pop("mask"), "missing field 'mask'"),
        (lambda d: d.update(mask="1001"), "mask"),
        (lambda d: d.update(budget=4), "budget"),
        (lambda d: d.update(colour="red"), "unknown field"),
        (lambda d: d.update(record={"objective": 1.0, "bogus": 2}), "record"),
    ],
)
def test_load_refuses_bad_files(tmp_path, edit, message):
    d = make_plan().to_dict()
    edit(d)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(d))
    with pytest.raises(PlanError, match=message):
        CachePlan.load(path)


def test_load_refuses_corrupt_json(tmp_path):
    path = tmp_path / "corrupt.json"
    path.write_text('{"num_steps": 8, "budget"')
    with pytest.raises(PlanError, match="not a valid JSON plan"):
        CachePlan.load(path)
    with pytest.raises(PlanError, match="no such plan file"):
        CachePlan.load(tmp_path / "missing.json")


def test_model_and_step_checks(tiny_flux):
    from budcache.demo.model import DigitsFlux

    plan = make_plan(model=model_identity(tiny_flux.transformer))
    plan.check_model(tiny_flux.transformer)
    with pytest.raises(PlanError, match="another config"):
        plan.check_model(DigitsFlux().transformer)
    with pytest.raises(PlanError, match="not a DigitsFlux"):
        plan.check_model(DigitsFlux())
    plan.check_steps(8)
    with pytest.raises(PlanError, match="num_inference_steps=8"):
        plan.check_steps(28)


@pytest.mark.parametrize("k, b", [(28, 10), (20, 6), (8, 8), (5, 1), (13, 12)])
def test_uniform_mask(k, b):
    m = uniform_mask(k, b)
    assert len(m) == k and sum(m) == b and m[0] == 1
    gaps = [j - i for i, j in zip([i for i in range(k) if m[i]], [i for i in range(k) if m[i]][1:])]
    assert not gaps or max(gaps) - min(gaps) <= 1
