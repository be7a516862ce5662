"""Every mistake a caller can make through the public API is refused with a ``BudcacheError`` before any
transformer forward: one line that names the argument, and the pipeline generates bit-identically afterwards.

The table (``MISTAKES``) is also the "What budcache refuses" list of docs/errors.md
(``test_the_docs_list_every_refusal``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

import budcache
from budcache.errors import BudcacheError, CacheConflictError, PlanError
from budcache.plan import CachePlan
from budcache.planset import PlanSet
from budcache.search import SearchConfig
from tests.fixtures.tiny import tiny_flux_pipeline

ROOT = Path(__file__).resolve().parents[1]
K = 4
SIZE = dict(height=16, width=16)


def _inputs(n: int = 2) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [
        dict(prompt_embeds=torch.randn(1, 8, 32, generator=g), pooled_prompt_embeds=torch.randn(1, 32, generator=g))
        for _ in range(n)
    ]


@dataclass
class Context:
    pipe: Any
    calib: budcache.Calibration
    plan: CachePlan
    tmp: Path


@dataclass
class Mistake:
    what: str  # the words of docs/errors.md
    call: Callable[[Context], Any]
    error: type[BaseException]  # the BudcacheError subclass expected (also ValueError / TypeError where that fits)
    names: str  # the argument (or thing) the message must name


def _apply_twice(c: Context) -> None:
    with budcache.apply(c.pipe, c.plan):
        budcache.apply(c.pipe, c.plan)


def _with_diffusers_cache(config_name: str, **config: Any) -> Callable[[Context], Any]:
    def call(c: Context) -> None:
        import diffusers

        c.pipe.transformer.enable_cache(getattr(diffusers, config_name)(**config))
        try:
            budcache.apply(c.pipe, c.plan).remove()
        finally:
            c.pipe.transformer.disable_cache()

    return call


def _with_patched_forward(c: Context) -> None:
    """cache-dit (and other forward patchers) replace the transformer's forward on the instance."""
    transformer = c.pipe.transformer
    original = transformer.forward

    def patched(*args, **kwargs):
        return original(*args, **kwargs)

    vars(transformer)["forward"] = patched
    try:
        budcache.apply(c.pipe, c.plan).remove()
    finally:
        del vars(transformer)["forward"]


def _planset_call_without_budget(c: Context) -> None:
    plans = PlanSet([c.plan, CachePlan(K, 3, [1, 1, 0, 1], model=c.plan.model)])
    with budcache.apply(c.pipe, plans):
        c.pipe(**_inputs(1)[0], **SIZE, num_inference_steps=K, output_type="latent")


def _set_budget_mid_generation(c: Context) -> None:
    plans = PlanSet([c.plan, CachePlan(K, 3, [1, 1, 0, 1], model=c.plan.model)])
    with budcache.apply(c.pipe, plans, budget=2) as handle:

        def change(pipe, i, t, kwargs):
            handle.budget = 3
            return kwargs

        c.pipe(**_inputs(1)[0], **SIZE, num_inference_steps=K, output_type="latent", callback_on_step_end=change)


MISTAKES: list[Mistake] = [
    # calibrate
    Mistake(
        "calibrate: something that is not a diffusers pipeline",
        lambda c: budcache.calibrate("flux", ["a"], K),
        TypeError,
        "pipe",
    ),
    Mistake(
        "calibrate: a pipeline without a transformer",
        lambda c: budcache.calibrate(type("P", (), {"scheduler": c.pipe.scheduler})(), ["a"], K),
        TypeError,
        "pipe",
    ),
    Mistake("calibrate: no prompts", lambda c: budcache.calibrate(c.pipe, [], K), ValueError, "prompts"),
    Mistake(
        "calibrate: one string instead of a list of prompts",
        lambda c: budcache.calibrate(c.pipe, "a cat", K),
        TypeError,
        "prompts",
    ),
    Mistake(
        "calibrate: a prompt that is neither a string nor a dict",
        lambda c: budcache.calibrate(c.pipe, [42], K),
        TypeError,
        "prompts",
    ),
    Mistake(
        "calibrate: a prompt dict with an argument the pipeline does not take",
        lambda c: budcache.calibrate(c.pipe, [{**_inputs(1)[0], "bogus": 1}], K, **SIZE),
        TypeError,
        "bogus",
    ),
    Mistake(
        "calibrate: a call argument the pipeline does not take",
        lambda c: budcache.calibrate(c.pipe, _inputs(), K, bogus=1, **SIZE),
        TypeError,
        "bogus",
    ),
    Mistake(
        "calibrate: a call argument calibration sets itself",
        lambda c: budcache.calibrate(c.pipe, _inputs(), K, output_type="pil", **SIZE),
        ValueError,
        "output_type",
    ),
    Mistake(
        "calibrate: zero steps",
        lambda c: budcache.calibrate(c.pipe, _inputs(), 0, **SIZE),
        ValueError,
        "num_inference_steps",
    ),
    Mistake(
        "calibrate: negative steps",
        lambda c: budcache.calibrate(c.pipe, _inputs(), -3, **SIZE),
        ValueError,
        "num_inference_steps",
    ),
    Mistake(
        "calibrate: a step count that is not an integer",
        lambda c: budcache.calibrate(c.pipe, _inputs(), 4.5, **SIZE),
        TypeError,
        "num_inference_steps",
    ),
    Mistake(
        "calibrate: seeds of another length than the prompts",
        lambda c: budcache.calibrate(c.pipe, _inputs(), K, seeds=[1], **SIZE),
        ValueError,
        "seeds",
    ),
    Mistake(
        "calibrate: sizes beside height and width",
        lambda c: budcache.calibrate(c.pipe, _inputs(), K, sizes=[(16, 16), (16, 32)], **SIZE),
        ValueError,
        "height",
    ),
    Mistake(
        "calibrate: a size that is not (height, width)",
        lambda c: budcache.calibrate(c.pipe, _inputs(), K, sizes=[(16, 16), 32]),
        ValueError,
        "sizes",
    ),
    # search
    Mistake("search: something that is not a Calibration", lambda c: budcache.search("calib", 2), TypeError, "calib"),
    Mistake("search: a budget of zero", lambda c: budcache.search(c.calib, 0, progress=False), ValueError, "budget"),
    Mistake(
        "search: a budget above the step count",
        lambda c: budcache.search(c.calib, K + 1, progress=False),
        ValueError,
        "budget",
    ),
    Mistake(
        "search: a budget that is not an integer",
        lambda c: budcache.search(c.calib, 2.5, progress=False),
        TypeError,
        "budget",
    ),
    Mistake(
        "search: an unknown reuse rule",
        lambda c: budcache.search(c.calib, 2, rule="linear", progress=False),
        ValueError,
        "rule",
    ),
    Mistake(
        "search: an unknown metric",
        lambda c: budcache.search(c.calib, 2, metric="ssim", progress=False),
        ValueError,
        "metric",
    ),
    Mistake(
        "search: an unknown reuse mode",
        lambda c: budcache.search(c.calib, 2, reuse="hidden", progress=False),
        ValueError,
        "reuse",
    ),
    Mistake(
        "search: a config that is not a SearchConfig",
        lambda c: budcache.search(c.calib, 2, config={"starts": 2}, progress=False),
        TypeError,
        "config",
    ),
    Mistake(
        "search: a cap too small for the teacher and the references",
        lambda c: budcache.search(c.calib, 2, config=SearchConfig(max_forwards=3), progress=False),
        ValueError,
        "max_forwards",
    ),
    Mistake(
        "search: a validation set that is not a Calibration",
        lambda c: budcache.search(c.calib, 2, rule="extrapolate", validation=[1], progress=False),
        TypeError,
        "validation",
    ),
    # align
    Mistake("align: something that is not a plan", lambda c: budcache.align({"mask": [1]}, c.calib), TypeError, "plan"),
    Mistake(
        "align: a negative number of epochs",
        lambda c: budcache.align(c.plan, c.calib, config=budcache.align.AlignConfig(epochs=-1), progress=False),
        ValueError,
        "epochs",
    ),
    Mistake(
        "align: a plan of another step count than the calibration",
        lambda c: budcache.align(CachePlan(6, 2, [1, 0, 0, 1, 0, 0]), c.calib, progress=False),
        ValueError,
        "num_steps",
    ),
    # apply, remove, summary
    Mistake(
        "apply: something that is not a pipeline or transformer",
        lambda c: budcache.apply("flux", c.plan),
        TypeError,
        "pipe",
    ),
    Mistake(
        "apply: a dict instead of a plan", lambda c: budcache.apply(c.pipe, {"mask": [1, 0, 0, 1]}), TypeError, "plan"
    ),
    Mistake(
        "apply: a plan file that does not exist",
        lambda c: budcache.apply(c.pipe, c.tmp / "missing.json"),
        ValueError,
        "missing.json",
    ),
    Mistake("apply: twice on one pipeline", _apply_twice, CacheConflictError, "remove"),
    Mistake(
        "apply: over diffusers' FirstBlockCache",
        _with_diffusers_cache("FirstBlockCacheConfig", threshold=0.2),
        CacheConflictError,
        "disable_cache",
    ),
    Mistake(
        "apply: over diffusers' MagCache",
        _with_diffusers_cache("MagCacheConfig", threshold=0.1, num_inference_steps=K, mag_ratios=[1.0] * K),
        CacheConflictError,
        "disable_cache",
    ),
    Mistake(
        "apply: over a transformer whose forward was replaced (cache-dit and other patchers)",
        _with_patched_forward,
        CacheConflictError,
        "forward",
    ),
    Mistake(
        "apply: a plan searched for another model",
        lambda c: budcache.apply(
            c.pipe, CachePlan(K, 2, [1, 0, 1, 0], model={"class": "WanTransformer3DModel", "fingerprint": "0" * 16})
        ),
        ValueError,
        "model",
    ),
    Mistake(
        "apply: a budget that is not the plan's",
        lambda c: budcache.apply(c.pipe, c.plan, budget=3).remove(),
        ValueError,
        "budget",
    ),
    Mistake(
        "apply: a plan set without a budget where it holds two for the call's steps",
        _planset_call_without_budget,
        ValueError,
        "budget",
    ),
    Mistake("apply: a budget changed during a generation", _set_budget_mid_generation, PlanError, "budget"),
    Mistake(
        "apply: a call with another step count than the plan's",
        lambda c: _call_with(c, c.plan, num_inference_steps=6),
        ValueError,
        "num_inference_steps",
    ),
    Mistake("remove: a pipeline without a plan", lambda c: budcache.remove(c.pipe), ValueError, "apply"),
    Mistake("summary: a pipeline without a plan", lambda c: budcache.summary(c.pipe), ValueError, "apply"),
    Mistake("remove: something that is not a pipeline", lambda c: budcache.remove(42), TypeError, "pipe"),
    # plans and plan sets
    Mistake(
        "CachePlan: a mask of another length than num_steps", lambda c: CachePlan(4, 2, [1, 0, 1]), ValueError, "mask"
    ),
    Mistake(
        "CachePlan: a budget that is not the mask's computed steps",
        lambda c: CachePlan(4, 3, [1, 0, 1, 0]),
        ValueError,
        "budget",
    ),
    Mistake("CachePlan: an unknown rule", lambda c: CachePlan(4, 2, [1, 0, 1, 0], rule="linear"), ValueError, "rule"),
    Mistake(
        "CachePlan: an unknown reuse mode", lambda c: CachePlan(4, 2, [1, 0, 1, 0], reuse="hidden"), ValueError, "reuse"
    ),
    Mistake(
        "CachePlan.load: a file that does not exist",
        lambda c: CachePlan.load(c.tmp / "none.json"),
        ValueError,
        "none.json",
    ),
    Mistake("CachePlan.save: onto a folder", lambda c: c.plan.save(c.tmp), ValueError, "path"),
    Mistake("PlanSet: no plans", lambda c: PlanSet([]), ValueError, "plan"),
    Mistake("PlanSet: something that is not a plan", lambda c: PlanSet([c.plan, "p.json"]), TypeError, "CachePlan"),
    Mistake(
        "PlanSet: two plans for one step count and budget", lambda c: PlanSet([c.plan, c.plan]), ValueError, "budget"
    ),
]


def _call_with(c: Context, plan: CachePlan, **kwargs: Any) -> torch.Tensor:
    with budcache.apply(c.pipe, plan):
        return c.pipe(**_inputs(1)[0], **SIZE, **{"num_inference_steps": K, **kwargs}, output_type="latent").images


@pytest.fixture(scope="module")
def context(tmp_path_factory) -> Context:
    torch.manual_seed(0)
    pipe = tiny_flux_pipeline()
    calib = budcache.calibrate(pipe, _inputs(), K, progress=False, **SIZE)
    plan = budcache.search(calib, 2, progress=False, rule="repeat")
    return Context(pipe, calib, plan, tmp_path_factory.mktemp("errors"))


def _generate(pipe) -> torch.Tensor:
    return pipe(
        **_inputs(1)[0], **SIZE, num_inference_steps=K, output_type="latent", generator=torch.Generator().manual_seed(0)
    ).images


@pytest.mark.parametrize("mistake", MISTAKES, ids=[m.what for m in MISTAKES])
def test_a_mistake_is_refused_up_front_in_one_line(context: Context, mistake: Mistake) -> None:
    reference = _generate(context.pipe)
    forwards = []
    counter = context.pipe.transformer.register_forward_pre_hook(lambda *a: forwards.append(1))
    try:
        with pytest.raises(BudcacheError) as info:
            mistake.call(context)
    finally:
        counter.remove()
    error = info.value
    message = str(error)
    assert isinstance(error, mistake.error), f"{type(error).__mro__} is not a {mistake.error.__name__}"
    assert "\n" not in message.strip() and mistake.names in message, message
    if "generation" not in mistake.what and "another step count" not in mistake.what and "two for" not in mistake.what:
        assert not forwards, f"{len(forwards)} transformer forwards before the refusal"
    assert getattr(context.pipe.transformer, "_budcache_handle", None) is None
    assert torch.equal(_generate(context.pipe), reference)


def test_there_are_at_least_thirty_mistakes_in_the_table() -> None:
    assert len(MISTAKES) >= 30


def test_the_docs_list_every_refusal() -> None:
    """docs/errors.md's "What budcache refuses" is this table (``python -m tests.test_errors`` prints it)."""
    text = (ROOT / "docs" / "errors.md").read_text()
    section = text.split("## What budcache refuses", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^- (.+)$", section, flags=re.M)
    assert listed == [m.what for m in MISTAKES]


if __name__ == "__main__":
    print("\n".join(f"- {m.what}" for m in MISTAKES))
