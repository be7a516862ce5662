"""Property-based fuzzing of ``budcache.apply`` inside real (tiny, offline) diffusers pipelines of every family.

Hypothesis draws the step count K (2..10), the batch size (1..2), a small valid resolution of the family, a
budget B and a mask with exactly B computed steps (the first step and every step whose transformer calls change
expert, argument shapes or settings, e.g. Wan2.2's first low-noise expert step or Qwen-Image 2.1's step after its
KV prefix pass, must compute: ``Reference.forced``, the rule budcache's calibration applies), a reuse rule
(plan-wide, or one per step), and a reuse mode (``residual`` / ``output``).
Properties, each checked for every family:

1. exactly B block-stack executions per CFG branch (a forward hook on the feed-forward of the first block of
   the first block list: a reused step still enters that head block, which then returns ``in + residual``
   without running its sub-modules), and ``budcache.summary`` agrees;
2. the all-compute plan (mask of ones) is bit-identical to no plan;
3. after ``remove`` (``budcache.remove``, ``handle.remove()`` or leaving the ``with`` block) the output is
   bit-identical to the output before the plan was ever applied;
4. a plan saved and loaded back (also applied from its path) gives the same output;
5. no cache tensor outlives a generation: the ``torch.Tensor`` objects created during a generation with a plan
   that are still alive after it are the same (by shape) as those left by the same generation without a plan
   (the scheduler's new ``sigmas`` / ``timesteps``). Measured with ``gc.freeze()``: every object alive before the
   generation is frozen, so ``gc.get_objects()`` afterwards lists only the survivors created during it;
6. (families with forced steps beyond the first) a residual plan that reuses a forced step fails with budcache's
   own error, and the pipeline is restored after it.

Each family's pipeline is built once per module (they are deterministic), and the reference output of every
(family, K, batch, resolution) is computed once and cached. A failing example is printed as hypothesis' numbered
draws (K, batch, resolution, B, ..., and the mask as a strip: ``#`` computes, ``.`` reuses).

Hypothesis profiles (this module's own: registering hypothesis' global ``default`` would change the settings of
every other hypothesis test, e.g. tests/test_fuzz_files.py):

* ``default``: derandomized (the same examples on every run), no deadline, no example database; 8 examples per
  family and property (4 for the slow HunyuanVideo 1.5 and LTX-2 pipelines), so that the whole file runs in
  under a minute on 2 CPU cores;
* ``nightly``: randomized, 200 examples per family and property (100 for the slow ones).

Choose with the environment variable ``HYPOTHESIS_PROFILE`` (``default`` when unset or any other name)::

    HYPOTHESIS_PROFILE=nightly python -m pytest tests/test_properties.py

They are registered with hypothesis as ``budcache-properties-default`` / ``budcache-properties-nightly``. Neither
runs hypothesis' ``explain`` phase: it traces every line of torch and diffusers a failing example runs (minutes).
"""

from __future__ import annotations

import functools
import gc
import os
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers.hooks._common import _ALL_TRANSFORMER_BLOCK_IDENTIFIERS
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st

import budcache
from budcache.plan import CachePlan, model_identity
from tests.fixtures.tiny import tiny_flux_pipeline, tiny_sd3_pipeline, tiny_wan_pipeline
from tests.fixtures.tiny_families import FAMILIES

# -- hypothesis profiles -------------------------------------------------------------------------------------------

_COMMON = dict(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
)
settings.register_profile("budcache-properties-default", max_examples=8, derandomize=True, database=None, **_COMMON)
settings.register_profile("budcache-properties-nightly", max_examples=200, derandomize=False, database=None, **_COMMON)
PROFILE_NAME = "nightly" if os.environ.get("HYPOTHESIS_PROFILE") == "nightly" else "default"
PROFILE = settings.get_profile(f"budcache-properties-{PROFILE_NAME}")

RULES = ("repeat", "extrapolate", "extrapolate2")
REUSES = ("residual", "output")
LEAVES = ("ff", "ffn", "feed_forward", "img_mlp")  # the feed-forward of a block, by family


# -- the families --------------------------------------------------------------------------------------------------


def _randn(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen)


def _flux_kwargs(batch: int, cfg: bool = False) -> dict:
    gen = torch.Generator().manual_seed(1)
    kwargs = dict(prompt_embeds=_randn(gen, batch, 8, 32), pooled_prompt_embeds=_randn(gen, batch, 32))
    if cfg:
        kwargs.update(
            negative_prompt_embeds=_randn(gen, batch, 8, 32),
            negative_pooled_prompt_embeds=_randn(gen, batch, 32),
            true_cfg_scale=3.0,
        )
    return kwargs


def _wan_kwargs(batch: int) -> dict:
    gen = torch.Generator().manual_seed(1)
    return dict(
        prompt_embeds=_randn(gen, batch, 8, 32),
        negative_prompt_embeds=_randn(gen, batch, 8, 32),
        num_frames=5,
        guidance_scale=5.0,
    )


def _sd3_kwargs(batch: int) -> dict:
    gen = torch.Generator().manual_seed(1)
    return dict(
        prompt_embeds=_randn(gen, batch, 8, 32),
        pooled_prompt_embeds=_randn(gen, batch, 64),
        negative_prompt_embeds=_randn(gen, batch, 8, 32),
        negative_pooled_prompt_embeds=_randn(gen, batch, 64),
        guidance_scale=3.0,
    )


def _from_table(name: str) -> Callable[[int], dict]:
    return lambda batch: FAMILIES[name].call_kwargs(batch_size=batch)


@dataclass(frozen=True)
class Spec:
    """A family as these properties call it: ``build()`` a pipeline, ``kwargs(batch)`` a call (prompt embeddings;
    height, width, ``num_inference_steps``, ``generator`` and ``output_type`` are set here), its valid small
    resolutions, and ``slow``: fewer examples per property."""

    build: Callable[[], Any]
    kwargs: Callable[[int], dict]
    sizes: tuple[tuple[int, int], ...]
    slow: bool = False


SPECS: dict[str, Spec] = {
    "flux": Spec(tiny_flux_pipeline, _flux_kwargs, ((8, 8), (16, 8), (16, 16))),
    "flux_true_cfg": Spec(tiny_flux_pipeline, functools.partial(_flux_kwargs, cfg=True), ((8, 8), (8, 16))),
    "wan21": Spec(tiny_wan_pipeline, _wan_kwargs, ((16, 16), (32, 16))),
    "sd3": Spec(tiny_sd3_pipeline, _sd3_kwargs, ((8, 8), (16, 8), (16, 16))),
    "z_image": Spec(FAMILIES["z_image"].pipeline, _from_table("z_image"), ((16, 16), (32, 16), (8, 8))),
    "z_image_turbo": Spec(FAMILIES["z_image_turbo"].pipeline, _from_table("z_image_turbo"), ((16, 16), (16, 32))),
    "qwen_image": Spec(FAMILIES["qwen_image"].pipeline, _from_table("qwen_image"), ((32, 32), (16, 16), (48, 32))),
    "qwen_image21": Spec(
        FAMILIES["qwen_image21"].pipeline, _from_table("qwen_image21"), ((64, 64), (32, 32), (64, 32))
    ),
    "qwen_image21_cfg": Spec(
        FAMILIES["qwen_image21"].pipeline,
        lambda batch: FAMILIES["qwen_image21"].call_kwargs(batch_size=batch, cfg=True),
        ((64, 64), (32, 32)),
    ),
    "wan22": Spec(FAMILIES["wan22"].pipeline, _from_table("wan22"), ((32, 32), (16, 16), (48, 32))),
    "flux2": Spec(FAMILIES["flux2"].pipeline, _from_table("flux2"), ((8, 8), (16, 8), (4, 4))),
    "flux2_klein": Spec(FAMILIES["flux2_klein"].pipeline, _from_table("flux2_klein"), ((8, 8), (16, 8))),
    "chroma": Spec(FAMILIES["chroma"].pipeline, _from_table("chroma"), ((8, 8), (16, 8))),
    "cogview4": Spec(FAMILIES["cogview4"].pipeline, _from_table("cogview4"), ((16, 16), (32, 16))),
    "sana": Spec(FAMILIES["sana"].pipeline, _from_table("sana"), ((32, 32),)),
    "hunyuan_video15": Spec(
        FAMILIES["hunyuan_video15"].pipeline, _from_table("hunyuan_video15"), ((8, 8), (16, 16)), slow=True
    ),
    "ltx2": Spec(FAMILIES["ltx2"].pipeline, _from_table("ltx2"), ((32, 32),), slow=True),
}
NAMES = list(SPECS)


@functools.cache
def pipeline(name: str) -> Any:
    """The family's pipeline, built once per module (budcache is removed after every use)."""
    return SPECS[name].build()


def head_leaf(transformer: torch.nn.Module) -> torch.nn.Module:
    """The feed-forward of the first block of the transformer's first block list: it runs a fixed number of times
    per block-stack execution (once; CogView4 runs it on the image, then on the text), and never on a reused step
    (the head block returns ``in + residual`` at once; with output reuse the transformer is not run at all)."""
    lists = [
        child
        for name, child in transformer.named_children()
        if name in _ALL_TRANSFORMER_BLOCK_IDENTIFIERS and isinstance(child, torch.nn.ModuleList) and len(child)
    ]
    head = lists[0][0]
    leaf = next((getattr(head, n) for n in LEAVES if isinstance(getattr(head, n, None), torch.nn.Module)), None)
    assert leaf is not None, f"no feed-forward ({LEAVES}) in {type(head).__name__}"
    return leaf


def experts(pipe: Any) -> dict[str, torch.nn.Module]:
    return {n: getattr(pipe, n) for n in ("transformer", "transformer_2") if getattr(pipe, n, None) is not None}


def _structure(value: Any) -> Any:
    """What a step's cache depends on, as budcache's calibration sees it: tensor shapes, and the values of plain
    settings (Qwen-Image 2.1 passes ``kv_cache_mode="extract"`` at step 0, ``"cached"`` after it)."""
    if torch.is_tensor(value):
        return tuple(value.shape)
    if isinstance(value, (list, tuple)):
        return tuple(_structure(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _structure(v)) for k, v in value.items()))
    return value if isinstance(value, (int, float, str, bool, type(None))) else type(value).__name__


@dataclass
class Probe:
    """Counts, per transformer call (step, position in the step, expert), how often the head blocks' feed-forward
    ran. ``calls``: (step, position, expert, argument structure) of every call."""

    pipe: Any
    calls: list = field(default_factory=list)
    executions: Counter = field(default_factory=Counter)  # (expert, position) -> feed-forward runs
    per_call: list = field(default_factory=list)  # feed-forward runs of each call
    _handles: list = field(default_factory=list)
    _current: tuple | None = None

    def __enter__(self) -> Probe:
        scheduler = self.pipe.scheduler
        for name, model in experts(self.pipe).items():

            def pre(module, args, kwargs, name=name):
                step = scheduler.step_index if scheduler.step_index is not None else 0
                position = sum(1 for c in self.calls if c[0] == step)
                structure = (_structure(args), tuple((k, _structure(v)) for k, v in sorted(kwargs.items())))
                self.calls.append((step, position, name, structure))
                self.per_call.append(0)
                self._current = (name, position)

            def ran(*_):
                self.executions[self._current] += 1
                self.per_call[-1] += 1

            self._handles += [
                model.register_forward_pre_hook(pre, with_kwargs=True),
                head_leaf(model).register_forward_hook(ran),
            ]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()


def generate(name: str, steps: int, batch: int, size: tuple[int, int]) -> list[torch.Tensor]:
    """The family's output tensors (latents) for K steps, a fresh generator each time."""
    kwargs = SPECS[name].kwargs(batch)
    kwargs.update(
        height=size[0],
        width=size[1],
        num_inference_steps=steps,
        output_type="latent",
        generator=torch.Generator().manual_seed(0),
    )
    with torch.no_grad():
        out = pipeline(name)(**kwargs, return_dict=False)
    return [o for o in out if torch.is_tensor(o)]


@dataclass
class Reference:
    outputs: list[torch.Tensor]
    calls: list  # (step, position, expert, structure)
    forced: list[int]  # steps that must compute: 0, and those whose calls change (expert, shapes, settings)
    runs: int  # how often the head block's feed-forward runs in one block-stack execution (CogView4: twice)


_REFERENCES: dict[tuple, Reference] = {}
_LEFTOVERS: dict[tuple, list] = {}


def reference(name: str, steps: int, batch: int, size: tuple[int, int]) -> Reference:
    """The pipeline's output without a plan, and how it calls its transformers."""
    key = (name, steps, batch, size)
    if key not in _REFERENCES:
        pipe = pipeline(name)
        assert not any(hasattr(m, "_budcache_handle") for m in experts(pipe).values()), "a plan was left applied"
        with Probe(pipe) as probe:
            outputs = generate(name, steps, batch, size)
        runs = set(probe.per_call)
        assert len(runs) == 1 and min(runs) > 0, f"{name}: the head feed-forward ran {probe.per_call} times per call"
        per_step = Counter(c[0] for c in probe.calls)
        assert sorted(per_step) == list(range(steps)) and len(set(per_step.values())) == 1, per_step
        by_step = [[(c[2], c[3]) for c in probe.calls if c[0] == k] for k in range(steps)]
        forced = [0] + [k for k in range(1, steps) if by_step[k] != by_step[k - 1]]
        _REFERENCES[key] = Reference(outputs, probe.calls, forced, runs.pop())
    return _REFERENCES[key]


def survivors(run: Callable[[], Any]) -> list:
    """Shapes of the tensors that ``run()`` creates and that are still alive after it (sorted)."""
    gc.freeze()  # everything alive (or garbage) now is left out of gc.get_objects() and of collections
    try:
        result = run()
        del result
        gc.collect()
        return sorted(tuple(o.shape) for o in gc.get_objects() if isinstance(o, torch.Tensor))
    finally:
        gc.unfreeze()


def leftovers(name: str, steps: int, batch: int, size: tuple[int, int]) -> list:
    """Shapes of the tensors a generation without a plan leaves alive (the scheduler's new sigmas, timesteps)."""
    key = (name, steps, batch, size)
    if key not in _LEFTOVERS:
        generate(name, steps, batch, size)  # warm: lazily built buffers exist before counting survivors
        _LEFTOVERS[key] = survivors(lambda: generate(name, steps, batch, size))
    return _LEFTOVERS[key]


# -- drawing plans -------------------------------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    steps: int
    batch: int
    size: tuple[int, int]
    ref: Reference
    plan: CachePlan


def boundary(pipe: Any) -> float | None:
    return pipe.config.get("boundary_ratio") if getattr(pipe, "transformer_2", None) is not None else None


def draw_case(
    data: st.DataObject, name: str, all_compute: bool = False, with_model: bool = False, reuse_forced: bool = False
) -> Case:
    """K, batch, resolution, and a plan for them: B computed steps (the forced ones among them; all of them with
    ``all_compute``; every forced step but one, which the plan reuses, with ``reuse_forced``), a reuse mode
    (``residual`` with ``reuse_forced``), a rule and maybe per-step rules."""
    spec = SPECS[name]
    steps = data.draw(st.integers(2, 6 if spec.slow else 10), label="K")
    batch = data.draw(st.integers(1, 2), label="batch")
    size = data.draw(st.sampled_from(spec.sizes), label="height, width")
    ref = reference(name, steps, batch, size)
    required = ref.forced
    if reuse_forced:
        assume(len(ref.forced) > 1)
        reused = data.draw(st.sampled_from(ref.forced[1:]), label="forced step reused")
        required = [k for k in ref.forced if k != reused]
    if all_compute:
        mask = [1] * steps
    else:
        free = [k for k in range(steps) if k not in ref.forced]
        budget = data.draw(st.integers(len(required), len(required) + len(free)), label="B")
        extra = data.draw(
            st.lists(
                st.sampled_from(free), min_size=budget - len(required), max_size=budget - len(required), unique=True
            )
            if free
            else st.just([]),
            label="computed steps beyond the forced ones",
        )
        mask = [int(k in required or k in extra) for k in range(steps)]
    reuse = "residual" if reuse_forced else data.draw(st.sampled_from(REUSES), label="reuse")
    rule = data.draw(st.sampled_from(RULES), label="rule")
    rules = data.draw(
        st.none() | st.lists(st.sampled_from(RULES), min_size=steps, max_size=steps), label="rules per step"
    )
    pipe = pipeline(name)
    plan = CachePlan(
        num_steps=steps,
        budget=sum(mask),
        mask=mask,
        reuse=reuse,
        rule=rule,
        rules=rules,
        boundary_ratio=boundary(pipe),
        model=model_identity(pipe.transformer) if with_model else {},
    )
    data.draw(st.just(plan.strip), label="mask")  # shown with the falsifying example
    return Case(name, steps, batch, size, ref, plan)


def check(name: str, prop: Callable[[st.DataObject, str], None]) -> None:
    """Run ``prop(data, name)`` under the selected profile (half the examples for a slow family)."""
    examples = PROFILE.max_examples
    if SPECS[name].slow:
        examples = max(3, examples // 2)

    @settings(PROFILE, max_examples=examples)
    @given(data=st.data())
    def run(data):
        try:
            prop(data, name)
        finally:  # never leave a plan on the shared pipeline
            for model in experts(pipeline(name)).values():
                handle = getattr(model, "_budcache_handle", None)
                if handle is not None:
                    handle.remove()

    run()


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


# -- the properties ------------------------------------------------------------------------------------------------


def _budget(data: st.DataObject, name: str) -> None:
    case = draw_case(data, name)
    pipe, plan, steps = pipeline(name), case.plan, case.steps
    expected = Counter()  # (expert, position) -> computed steps
    steps_of = Counter()  # (expert, position) -> steps it serves
    for step, position, expert, _ in case.ref.calls:
        expected[(expert, position)] += plan.mask[step]
        steps_of[(expert, position)] += 1
    with budcache.apply(pipe, plan), Probe(pipe) as probe:
        generate(name, steps, case.batch, case.size)
        summary = budcache.summary(pipe)
    # per branch (the call's position in its step), over all experts: exactly B block-stack executions
    executions = {k: n / case.ref.runs for k, n in probe.executions.items() if n}
    for position in sorted({p for _, p in steps_of}):
        ran = sum(n for (e, p), n in executions.items() if p == position)
        assert ran == plan.budget, f"branch {position}: {ran} block-stack executions, budget {plan.budget}"
    assert executions == {k: v for k, v in expected.items() if v}
    # the summary: one entry per branch and expert, no interruption, computed / reused as the mask says
    assert all(set(c) == {"computed", "reused"} for c in summary.values()), summary
    reported = sorted(
        (key.split("/")[0] if "/" in key else "transformer", c["computed"], c["reused"]) for key, c in summary.items()
    )
    wanted = sorted((e, expected[(e, p)], steps_of[(e, p)] - expected[(e, p)]) for e, p in steps_of)
    assert reported == wanted, f"summary {summary}, expected (expert, computed, reused) {wanted}"


def _all_compute(data: st.DataObject, name: str) -> None:
    case = draw_case(data, name, all_compute=True)
    with budcache.apply(pipeline(name), case.plan):
        out = generate(name, case.steps, case.batch, case.size)
    assert same(out, case.ref.outputs), "the all-compute plan changed the output"


def _remove(data: st.DataObject, name: str) -> None:
    case = draw_case(data, name)
    pipe = pipeline(name)
    how = data.draw(st.sampled_from(("with", "handle.remove", "budcache.remove")), label="removed by")
    if how == "with":
        with budcache.apply(pipe, case.plan):
            generate(name, case.steps, case.batch, case.size)
    else:
        handle = budcache.apply(pipe, case.plan)
        generate(name, case.steps, case.batch, case.size)
        if how == "handle.remove":
            handle.remove()
        else:
            budcache.remove(pipe)
    assert not any(hasattr(m, "_budcache_handle") for m in experts(pipe).values())
    assert same(generate(name, case.steps, case.batch, case.size), case.ref.outputs), f"not restored by {how}"


def _save_load(data: st.DataObject, name: str) -> None:
    case = draw_case(data, name, with_model=data.draw(st.booleans(), label="with model identity"))
    pipe = pipeline(name)
    with budcache.apply(pipe, case.plan):
        original = generate(name, case.steps, case.batch, case.size)
    with tempfile.TemporaryDirectory() as folder:
        path = case.plan.save(Path(folder) / "plan.json")
        loaded = CachePlan.load(path)
        assert loaded == case.plan
        with budcache.apply(pipe, loaded):
            assert same(generate(name, case.steps, case.batch, case.size), original), "the loaded plan differs"
        with budcache.apply(pipe, str(path)):
            assert same(generate(name, case.steps, case.batch, case.size), original), "the plan file differs"


def _no_leak(data: st.DataObject, name: str) -> None:
    case = draw_case(data, name)
    plain = leftovers(name, case.steps, case.batch, case.size)
    with budcache.apply(pipeline(name), case.plan):
        generate(name, case.steps, case.batch, case.size)  # the first generation under the plan
        left = survivors(lambda: generate(name, case.steps, case.batch, case.size))
        extra = list((Counter(left) - Counter(plain)).elements())
    assert not extra, f"tensors of shapes {extra} outlive a generation under the plan (without it: {plain})"


def _forced_reuse(data: st.DataObject, name: str) -> None:
    case = draw_case(data, name, reuse_forced=True)
    with budcache.apply(pipeline(name), case.plan), pytest.raises(Exception) as error:
        generate(name, case.steps, case.batch, case.size)
    if not (isinstance(error.value, budcache.BudcacheError) or str(error.value).startswith("budcache")):
        pytest.fail(
            f"a residual plan that reuses a step whose transformer calls differ from the step before fails "
            f"with a bare {type(error.value).__name__}, not budcache's own error: {error.value}"
        )
    assert same(generate(name, case.steps, case.batch, case.size), case.ref.outputs), "not restored after the error"


@pytest.mark.parametrize("name", NAMES)
def test_exactly_budget_block_stack_executions_per_branch(name):
    check(name, _budget)


@pytest.mark.parametrize("name", NAMES)
def test_all_compute_plan_is_bit_identical_to_no_plan(name):
    check(name, _all_compute)


@pytest.mark.parametrize("name", NAMES)
def test_remove_restores_the_output_bit_for_bit(name):
    check(name, _remove)


@pytest.mark.parametrize("name", NAMES)
def test_saved_and_loaded_plan_gives_the_same_output(name):
    check(name, _save_load)


@pytest.mark.parametrize("name", NAMES)
def test_no_cache_tensor_outlives_a_generation(name):
    check(name, _no_leak)


@pytest.mark.parametrize("name", ["qwen_image21", "qwen_image21_cfg", "wan22"])  # the families with forced steps
def test_reusing_a_forced_step_fails_with_budcaches_own_error(name):
    check(name, _forced_reuse)
