"""The plan and checkpoint loaders survive fuzzing: truncations, byte flips, wrong types and extra
fields give PlanError / CheckpointError, never another exception; what loads is a usable plan."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from budcache.errors import CheckpointError, PlanError
from budcache.plan import CachePlan, SearchRecord
from budcache.planset import PlanSet, load_plans
from budcache.sampling import OutputDenoiser, linear_sigmas
from budcache.search import Batch, Evaluator, SearchConfig, search_plan
from budcache.search.checkpoint import FORMAT, Checkpoint

FUZZ = settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
PLAN = CachePlan(
    num_steps=8,
    budget=3,
    mask=[1, 0, 0, 1, 0, 0, 1, 0],
    rule="extrapolate",
    sigmas=linear_sigmas(8),
    schedule=linear_sigmas(8),
    rules=["repeat", "repeat", "extrapolate", "repeat", "repeat", "repeat", "repeat", "repeat"],
    model={"class": "FluxTransformer2DModel", "fingerprint": "0123456789abcdef"},
    record=SearchRecord(
        objective=0.01,
        uniform_objective=0.02,
        teacher_steps=8,
        evaluations=40,
        forwards=300,
        solver="Euler",
        effort="default",
    ),
)
TEXT = json.dumps(PLAN.to_dict(), indent=1).encode()
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)


def mutations(fields: list[str]):
    """Edits of a JSON object: a field set to any JSON value, a field removed, an unknown field added."""
    return st.one_of(
        st.tuples(st.just("set"), st.sampled_from(fields), JSON),
        st.tuples(st.just("drop"), st.sampled_from(fields), st.none()),
        st.tuples(st.just("add"), st.text(max_size=8), JSON),
    )


def apply(d: dict, edit) -> dict:
    kind, key, value = edit
    d = dict(d)
    if kind == "drop":
        d.pop(key, None)
    else:
        d[key] = value
    return d


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def load(folder, data: bytes) -> None:
    """Load; a plan that loads must describe, save and load again."""
    path = folder / "plan.json"
    path.write_bytes(data)
    try:
        plan = CachePlan.load(path)
    except PlanError:
        return
    plan.describe()
    assert CachePlan.load(plan.save(folder / "again.json")) == plan


@FUZZ
@given(st.integers(0, len(TEXT)))
def test_truncated_plans(folder, n):
    load(folder, TEXT[:n])


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(TEXT) - 1), st.integers(0, 255)), min_size=1, max_size=4))
def test_plans_with_flipped_bytes(folder, flips):
    data = bytearray(TEXT)
    for i, b in flips:
        data[i] = b
    load(folder, bytes(data))


@FUZZ
@given(mutations(list(PLAN.to_dict())))
def test_plans_with_wrong_types_and_extra_fields(folder, edit):
    load(folder, json.dumps(apply(PLAN.to_dict(), edit)).encode())


@FUZZ
@given(mutations(list(PLAN.to_dict()["record"])))
def test_plans_with_a_wrong_record(folder, edit):
    d = PLAN.to_dict()
    load(folder, json.dumps({**d, "record": apply(d["record"], edit)}).encode())


SET = PlanSet(
    [
        PLAN,
        CachePlan(
            num_steps=8,
            budget=4,
            mask=[1, 0, 1, 0, 1, 0, 1, 0],
            model=PLAN.model,
            rule="extrapolate",
            schedule=linear_sigmas(8),
        ),
        CachePlan(num_steps=4, budget=2, mask=[1, 0, 1, 0], model=PLAN.model),
    ]
)
SET_TEXT = json.dumps(SET.to_dict(), indent=1).encode()
FEW = settings(FUZZ, max_examples=60)


def load_set(folder, data: bytes) -> None:
    """Load as a plan or plan set; what loads must describe, save and load again."""
    path = folder / "plans.json"
    path.write_bytes(data)
    try:
        plans = load_plans(path)
    except PlanError:
        return
    plans.describe()
    assert load_plans(plans.save(folder / "again.json")) == plans


@FEW
@given(
    st.integers(0, len(SET_TEXT)),
    st.lists(st.tuples(st.integers(0, len(SET_TEXT) - 1), st.integers(0, 255)), max_size=3),
)
def test_truncated_or_flipped_plan_sets(folder, n, flips):
    data = bytearray(SET_TEXT)
    for i, b in flips:
        data[i] = b
    load_set(folder, bytes(data[:n]) if not flips else bytes(data))


@FEW
@given(st.integers(0, 2), mutations(list(PLAN.to_dict())), mutations(["schema_version", "plans"]))
def test_plan_sets_with_wrong_plans_or_fields(folder, i, edit, outer):
    d = SET.to_dict()
    d["plans"][i] = apply(d["plans"][i], edit)
    load_set(folder, json.dumps(d).encode())
    load_set(folder, json.dumps(apply(SET.to_dict(), outer)).encode())


@pytest.fixture(scope="module")
def checkpoint(gmm, tmp_path_factory):
    """A real checkpoint, the evaluator that wrote it and its identity."""
    path = tmp_path_factory.mktemp("ckpt") / "search.json"
    evaluate = Evaluator([Batch(OutputDenoiser(gmm), gmm.noise(4, seed=0))], linear_sigmas(8))
    search_plan(
        evaluate,
        3,
        reuse="output",
        config=SearchConfig(strategy="classic", iterations=10, starts=1, kicks=0),
        progress=False,
        checkpoint=path,
    )
    return path.read_bytes(), evaluate


def test_the_checkpoint_restores_untouched(folder, checkpoint):
    data, evaluate = checkpoint
    path = folder / "ok.json"
    path.write_bytes(data)
    assert Checkpoint(path, json.loads(data)["identity"]).restore(evaluate) == len(json.loads(data)["memo"])


@FUZZ
@given(data=st.data())
def test_corrupt_checkpoints(folder, checkpoint, data):
    text, evaluate = checkpoint
    identity = json.loads(text)["identity"]
    how = data.draw(st.sampled_from(["truncate", "flip", "field"]))
    if how == "truncate":
        broken = text[: data.draw(st.integers(0, len(text) - 1))]
    elif how == "flip":
        broken = bytearray(text)
        for i, b in data.draw(
            st.lists(st.tuples(st.integers(0, len(text) - 1), st.integers(0, 255)), min_size=1, max_size=4)
        ):
            broken[i] = b
        broken = bytes(broken)
    else:
        edit = data.draw(mutations(["format", "identity", "forwards", "finished", "memo", "checksum"]))
        broken = json.dumps(apply(json.loads(text), edit)).encode()
    path = folder / "search.json"
    path.write_bytes(broken)
    try:
        Checkpoint(path, identity).restore(evaluate)
    except CheckpointError:
        return
    restored = json.loads(broken)
    if restored["format"] == FORMAT:  # the checksum lets only unchanged contents through
        assert restored == json.loads(text)
