"""The composability matrix, memory and speed features: a plan on a transformer with diffusers' group offloading
(block and leaf level; CUDA streams), layerwise casting (fp8 storage), LoRA adapters (peft), torch.compile (regional
and whole, ``fullgraph=True``), and model / sequential CPU offload, on the tiny FLUX, Wan2.1 and Qwen-Image pipelines.

Every "yes" row runs on CPU, in one test (:func:`test_plan_with_feature`), its checks collected and reported together:

1. exactly B of K block-stack executions per branch (the family's leaf inside the first block, counted) and the
   summary, under the all-compute plan (K) and under ``MASK`` (B);
2. the all-compute plan gives the feature's own output bit-identically (compile: within ``COMPILED``);
3. the B-step plan with the feature against the same plan without it (:func:`_close`, tolerances below);
4. feature first, then apply; apply first, then the feature (same output as the other order): removing the plan gives
   the feature's own output bit-identically, and the feature is still in place (group offloading: every group that
   was onloaded per generation before the plan is onloaded again; under the plan, reused steps onload nothing inside
   the block stack, which is what makes a plan save offloading time).

Disabling a feature under a plan: diffusers 0.42.1 has no public call that disables group offloading (only its
internal remove-and-reapply, which unloading or deleting LoRA adapters triggers: tested below), layerwise casting
cannot be undone (its hook's ``deinitalize_hook`` raises NotImplementedError), and compiling has no undo; LoRA's
``disable_lora``, ``delete_adapters`` and ``unload_lora`` are tested under a plan.

Group offloading runs with ``onload_device = offload_device = cpu`` (the hooks, groups and transfers are the ones a
GPU gets; the transfers move nothing). LoRA has its own test of fusing, unfusing, disabling and deleting adapters
under a plan (:func:`test_lora_under_plan`). Compile runs with the ``eager`` backend (dynamo traces every region
with ``fullgraph=True`` as for any backend; the backend only runs the graph), and counts with a tensor counter: the
harness' list-appending hook makes dynamo guard on the list's length, hence a recompile per call.

The "accelerator" rows have a test that runs where ``torch.cuda.is_available()``
(:func:`test_accelerator_feature`), and one that checks, without an accelerator, what their reason says. Two of
them can still be exercised on CPU: ``enable_model_cpu_offload(device="cpu")`` installs accelerate's hooks (moving
nothing), and the hook layout ``use_stream=True`` builds (a lazy-prefetch hook that traces the execution order in the
first call, then removes its per-group trackers) is built here with diffusers' own functions, without the stream.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from diffusers.hooks import group_offloading as go
from peft import LoraConfig

import budcache
from budcache.errors import CacheConflictError, StateError
from tests.fixtures.composability import (
    FAMILIES,
    MASK,
    SETUPS,
    K,
    Row,
    counting,
    executions,
    generate,
    onloads,
    plan_for,
)

GROUP_BLOCK = "group offloading (block level)"
GROUP_LEAF = "group offloading (leaf level)"
STREAMS = "group offloading with CUDA streams"
FP8_E4M3 = "layerwise casting (fp8 e4m3 storage)"
FP8_E5M2 = "layerwise casting (fp8 e5m2 storage)"
LORA = "LoRA (peft): load, fuse, unfuse, two adapters with weights"
REGIONAL = "regional compile (fullgraph)"
WHOLE = "whole compile (fullgraph)"
MODEL_OFFLOAD = "model CPU offload"
SEQUENTIAL_OFFLOAD = "sequential CPU offload"

CPU = torch.device("cpu")
B = sum(MASK)

# (3), per feature. Group offloading moves weights between devices and changes no value: bit-identical.
# fp8 storage rounds the weights: the B-step plan on the fp8-stored model differs from the plan on the float32 one by
# the rounding's effect, which the plan neither removes nor amplifies. Measured (relative L2 of the final latents),
# the ratio of that difference to fp8 storage's own (full compute, with vs without) is 0.96 .. 1.03 over the 6 rows;
# allowed: up to 1.5. The plan's own deviation from full compute is the same with and without fp8 storage: measured
# ratios 0.94 .. 1.03, allowed 0.8 .. 1.25.
FP8_RATIO = 1.5
CACHE_RATIO = (0.8, 1.25)
# LoRA: the plan with two weighted, unfused adapters against the same plan on a plain transformer holding the merged
# weights W + sum(weight_i * scale * B_i A_i): x W^T + s (x A^T) B^T and x (W + s B A)^T round differently in float32;
# measured relative error <= 4e-7 over 6 steps, allowed 1e-5. Fused adapters are merged into W in that same order:
# measured 0, allowed 1e-6. Unfusing subtracts the deltas again (W + d - d is not W in float32): within 1e-5.
LORA_UNFUSED = 1e-5
LORA_FUSED = 1e-6
# Compile: a graph with the plan's block hooks is another graph than the blocks' own, and a backend may fuse or
# reorder float operations in either; compiled against eager within test_compile.py's tolerance (with the eager and
# aot_eager backends on CPU they are in fact identical). The plan removed, the model runs its own compiled graph
# again: bit-identical.
COMPILED = dict(atol=1e-5, rtol=1e-4)
BACKEND = "eager"

_FP8_WHY = (
    "fp8 storage rounds the weights: the plan with it vs the plan without, relative error at most 1.5x "
    "fp8 storage's own error at full compute (measured 0.96-1.03x); all-compute plan bit-identical"
)
_LORA_WHY = (
    "the plan with unfused adapters vs the same plan on the merged weights: relative error <= 1e-5 "
    "(float32 rounding, measured <= 4e-7); fused <= 1e-6; all-compute plan bit-identical"
)
_COMPILE_WHY = (
    "compiled graphs vs eager within atol 1e-5, rtol 1e-4 (a backend may fuse float operations "
    "differently); the plan removed, the compiled output comes back bit-identically"
)
_STREAMS_WHY = (
    'use_stream=True raises ValueError on CPU ("requires an onload device whose backend implements '
    'streams"); apply the plan first: enabled before and not yet run, apply is refused'
)
_MODEL_WHY = (
    'enable_model_cpu_offload() raises "requires accelerator, but not found"; with device="cpu" its hooks '
    "run but move nothing; apply the plan first: the hooks the pipeline re-installs after each call drop a "
    "plan applied after them, and the next call is refused"
)
_SEQUENTIAL_WHY = (
    'enable_sequential_cpu_offload() raises "requires accelerator, but not found"; with device="cpu" '
    "accelerate itself fails (TypeError offloading a weight to meta), plan or not"
)

_GROUP_WHY = (
    "bit-identical; enabled before the plan, skipped blocks are not onloaded (after it: the output is the "
    "same, the transfers the full run's)"
)
_YES = {
    GROUP_BLOCK: _GROUP_WHY,
    GROUP_LEAF: _GROUP_WHY,
    FP8_E4M3: _FP8_WHY,
    FP8_E5M2: _FP8_WHY,
    LORA: _LORA_WHY,
    REGIONAL: _COMPILE_WHY,
    WHOLE: "compile, then apply (apply, then torch.compile is refused with the order to use); " + _COMPILE_WHY,
}
_ACCELERATOR = {STREAMS: _STREAMS_WHY, MODEL_OFFLOAD: _MODEL_WHY, SEQUENTIAL_OFFLOAD: _SEQUENTIAL_WHY}
_ORDER = (
    GROUP_BLOCK,
    GROUP_LEAF,
    STREAMS,
    FP8_E4M3,
    FP8_E5M2,
    LORA,
    REGIONAL,
    WHOLE,
    MODEL_OFFLOAD,
    SEQUENTIAL_OFFLOAD,
)

ROWS: list[Row] = [
    Row(feature, family, "yes", _YES[feature])
    if feature in _YES
    else Row(feature, family, "accelerator", _ACCELERATOR[feature])
    for feature in _ORDER
    for family in FAMILIES
]
YES = [row for row in ROWS if row.status == "yes"]
ACCELERATOR = [row for row in ROWS if row.status == "accelerator"]

pytestmark = pytest.mark.filterwarnings("ignore:Already found a `peft_config` attribute:UserWarning")  # 2nd adapter


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def summary_of(family: str, computed: int) -> dict[str, dict[str, int]]:
    return {b: {"computed": computed, "reused": K - computed} for b in SETUPS[family].branches}


class Problems(list):
    """The checks of one test, collected: every failing one is reported, not only the first."""

    def __call__(self, ok: Any, what: str) -> None:
        if not ok:
            self.append(what)

    def report(self) -> None:
        assert not self, "\n".join(self)


@pytest.fixture(autouse=True)
def fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture(scope="module")
def plain() -> Callable[[str], dict[str, Any]]:
    """Per family, built once: the pipeline without any feature, its output (``full``) and under ``MASK``
    (``plan``)."""
    cache: dict[str, dict[str, Any]] = {}

    def get(family: str) -> dict[str, Any]:
        if family not in cache:
            setup = SETUPS[family]
            pipe = setup.make()
            cache[family] = dict(full=generate(pipe, setup), plan=executions(pipe, setup, plan_for(pipe))[0])
        return cache[family]

    return get


# --- the features ----------------------------------------------------------------------------------------------------

ADAPTERS = ("a", "b")
WEIGHTS = (0.7, 0.4)
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def _add_loras(transformer: torch.nn.Module) -> None:
    """Two adapters with random non-zero A and B (``init_lora_weights=False``), both active, weighted."""
    for i, name in enumerate(ADAPTERS):
        torch.manual_seed(100 + i)
        transformer.add_adapter(
            LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS, init_lora_weights=False), adapter_name=name
        )
    transformer.set_adapters(list(ADAPTERS), weights=list(WEIGHTS))


def _group_offload(offload_type: str) -> Callable[[Any], None]:
    def enable(pipe: Any) -> None:
        pipe.transformer.enable_group_offload(
            onload_device=CPU, offload_device=CPU, offload_type=offload_type, num_blocks_per_group=1
        )

    return enable


def _layerwise(dtype: torch.dtype) -> Callable[[Any], None]:
    def enable(pipe: Any) -> None:
        pipe.transformer.enable_layerwise_casting(storage_dtype=dtype, compute_dtype=torch.float32)

    return enable


def _regional(pipe: Any) -> None:
    pipe.transformer.compile_repeated_blocks(fullgraph=True, backend=BACKEND)


def _whole(pipe: Any) -> None:
    pipe.transformer = torch.compile(pipe.transformer, fullgraph=True, backend=BACKEND)


ENABLE: dict[str, Callable[[Any], None]] = {
    GROUP_BLOCK: _group_offload("block_level"),
    GROUP_LEAF: _group_offload("leaf_level"),
    FP8_E4M3: _layerwise(torch.float8_e4m3fn),
    FP8_E5M2: _layerwise(torch.float8_e5m2),
    LORA: lambda pipe: _add_loras(pipe.transformer),
    REGIONAL: _regional,
    WHOLE: _whole,
}


def _model(pipe: Any) -> torch.nn.Module:
    return getattr(pipe.transformer, "_orig_mod", pipe.transformer)


def _blocks(transformer: torch.nn.Module) -> list[torch.nn.Module]:
    return [
        b
        for name in ("transformer_blocks", "single_transformer_blocks", "blocks")
        for b in getattr(transformer, name, [])
    ]


def _in_place(pipe: Any, feature: str) -> bool:
    """The feature is still on the transformer."""
    model = _model(pipe)
    if feature in (FP8_E4M3, FP8_E5M2):
        dtype = torch.float8_e4m3fn if feature == FP8_E4M3 else torch.float8_e5m2
        return any(p.dtype == dtype for b in _blocks(model) for p in b.parameters())
    if feature == LORA:
        from peft.tuners.lora import LoraLayer

        layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
        return bool(layers) and all(sorted(m.active_adapters) == list(ADAPTERS) for m in layers)
    if feature == REGIONAL:
        return all(getattr(b, "_compiled_call_impl", None) is not None for b in _blocks(model))
    if feature == WHOLE:
        return isinstance(pipe.transformer, torch._dynamo.eval_frame.OptimizedModule)
    return go._is_group_offload_enabled(model)  # group offloading: its onloads are counted besides


def _tick(counter: torch.Tensor, *_: Any) -> None:
    counter.add_(1)  # returns None: a forward hook that returns a value replaces the module's output


def _build(family: str, feature: str | None) -> tuple[Any, torch.Tensor | None]:
    """The family's pipeline, with a tensor counter on its leaf where the feature compiles (registered before
    compiling, so that the graphs count too)."""
    setup = SETUPS[family]
    pipe = setup.make()
    if feature not in (REGIONAL, WHOLE):
        return pipe, None
    counter = torch.zeros((), dtype=torch.int64)
    setup.leaf(pipe.transformer).register_forward_hook(functools.partial(_tick, counter))
    return pipe, counter


def _counted(pipe: Any, family: str, counter: torch.Tensor | None) -> tuple[torch.Tensor, int]:
    """One generation and its block-stack executions (counted at the family's leaf)."""
    setup = SETUPS[family]
    if counter is None:
        with counting(setup.leaf(_model(pipe))) as calls:
            out = generate(pipe, setup)
        return out, len(calls)
    before = int(counter)
    out = generate(pipe, setup)
    return out, int(counter) - before


def _run(pipe: Any, family: str, mask: list[int], counter: torch.Tensor | None) -> tuple[torch.Tensor, int, dict]:
    """One generation under a plan of ``mask`` applied for it: (latents, executions, summary)."""
    if counter is None:
        return executions(pipe, SETUPS[family], plan_for(pipe, mask))
    with budcache.apply(pipe, plan_for(pipe, mask)) as handle:
        out, calls = _counted(pipe, family, counter)
        return out, calls, handle.summary()


def _merged(pipe: Any, family: str) -> Any:
    """A plain pipeline of ``family`` whose LoRA-targeted weights are ``pipe``'s merged ones (base + every active
    adapter's weighted delta)."""
    from peft.tuners.lora import LoraLayer

    other = SETUPS[family].make()
    modules = dict(other.transformer.named_modules())
    with torch.no_grad():
        for name, layer in _model(pipe).named_modules():
            if isinstance(layer, LoraLayer):
                weight = layer.get_base_layer().weight.detach().clone()
                for adapter in layer.active_adapters:
                    weight = weight + layer.get_delta_weight(adapter)
                modules[name].weight.copy_(weight)
    return other


def _close(row: Row, pipe: Any, out: torch.Tensor, alone: torch.Tensor, ref: dict[str, Any], check: Problems) -> None:
    """(3): the B-step plan with the feature (``out``; ``alone``: the feature without a plan) against the same plan
    without the feature."""
    f = row.feature
    if f in (GROUP_BLOCK, GROUP_LEAF):
        check(torch.equal(alone, ref["full"]), "(3) offloaded output differs from the plain one")
        check(torch.equal(out, ref["plan"]), "(3) the plan's output with offloading differs from the plan's without")
    elif f in (FP8_E4M3, FP8_E5M2):
        feature_error, plan_error = rel(alone, ref["full"]), rel(out, ref["plan"])
        check(feature_error > 0, "(3) fp8 storage changed nothing")
        check(
            plan_error <= FP8_RATIO * feature_error,
            f"(3) plan with fp8 vs plan without: {plan_error:.4g} > {FP8_RATIO} x {feature_error:.4g}",
        )
        ratio = rel(out, alone) / rel(ref["plan"], ref["full"])
        check(CACHE_RATIO[0] <= ratio <= CACHE_RATIO[1], f"(3) the plan's deviation changed with fp8: x{ratio:.3f}")
    elif f == LORA:
        check(rel(alone, ref["full"]) > 1e-3, "(3) the adapters changed nothing")
        merged = _merged(pipe, row.family)
        merged_full = generate(merged, SETUPS[row.family])
        merged_plan = executions(merged, SETUPS[row.family], plan_for(merged))[0]
        check(rel(alone, merged_full) <= LORA_UNFUSED, f"(3) adapters vs merged weights: {rel(alone, merged_full)}")
        check(rel(out, merged_plan) <= LORA_UNFUSED, f"(3) plan with adapters vs merged: {rel(out, merged_plan)}")
    else:
        check(torch.allclose(alone, ref["full"], **COMPILED), "(3) compiled output differs from eager")
        check(torch.allclose(out, ref["plan"], **COMPILED), "(3) compiled plan differs from the eager plan")


def _same(row: Row, a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-identical, or (compile: another graph, or another pipeline compiled separately) within ``COMPILED``."""
    return torch.allclose(a, b, **COMPILED) if row.feature in (REGIONAL, WHOLE) else torch.equal(a, b)


# --- the yes rows ----------------------------------------------------------------------------------------------------


@torch.no_grad()
@pytest.mark.parametrize("row", YES, ids=lambda r: r.id)
def test_plan_with_feature(row: Row, plain) -> None:
    family, branches = row.family, len(SETUPS[row.family].branches)
    ref = plain(family)
    check = Problems()

    # the feature first, then apply
    pipe, counter = _build(family, row.feature)
    ENABLE[row.feature](pipe)
    with onloads(_model(pipe)) as alone_loads:
        alone = generate(pipe, SETUPS[family])
    ones, calls, summary = _run(pipe, family, [1] * K, counter)
    check(calls == K * branches and summary == summary_of(family, K), f"(1) all-compute: {calls} calls, {summary}")
    check(_same(row, ones, alone), "(2) the all-compute plan differs from the feature's own output")
    with onloads(_model(pipe)) as plan_loads:
        out, calls, summary = _run(pipe, family, MASK, counter)
    check(calls == B * branches and summary == summary_of(family, B), f"(1) B={B}: {calls} calls, {summary}")
    check(
        plan_loads == {"blocks": alone_loads["blocks"] * B // K, "other": alone_loads["other"]},
        f"(4) feature, then apply: onloads under the plan {plan_loads}, without it {alone_loads} (reused steps "
        "should onload nothing inside the block stack)",
    )
    _close(row, pipe, out, alone, ref, check)
    with onloads(_model(pipe)) as after_loads:
        after = generate(pipe, SETUPS[family])
    check(torch.equal(after, alone), "(4) feature, then apply: the output after remove() differs from before")
    check(
        after_loads == alone_loads and _in_place(pipe, row.feature),
        f"(4) feature, then apply: after remove() the feature is gone (onloads {after_loads}, were {alone_loads})",
    )

    # apply first, then the feature
    pipe, counter = _build(family, row.feature)
    handle = budcache.apply(pipe, plan_for(pipe))
    ENABLE[row.feature](pipe)
    if row.feature == WHOLE:  # the wrapper would compile the plan hook, or run without it: refused, with the order
        with pytest.raises(Exception, match=r"Compile first, then apply|then budcache\.apply\(pipe, plan\)"):
            generate(pipe, SETUPS[family])
    else:
        with onloads(_model(pipe)) as loads:
            again, calls = _counted(pipe, family, counter)
        check(
            calls == B * branches and handle.summary() == summary_of(family, B),
            f"(1) apply, then feature: {calls} calls, {handle.summary()}",
        )
        check(_same(row, again, out), "(4) apply, then feature: the plan's output differs from the other order's")
        # the feature's hooks wrap the plan's here, so a reused step still onloads the blocks it skips: the
        # output is the plan's, the transfers are the full run's (the README says to enable the feature first)
        check(
            loads["other"] == plan_loads["other"] and loads["blocks"] >= plan_loads["blocks"],
            f"(4) apply, then feature: onloads under the plan {loads}, in the other order {plan_loads}",
        )
    handle.remove()
    with onloads(_model(pipe)) as after_loads:
        after = generate(pipe, SETUPS[family])
    check(_same(row, after, alone), "(4) apply, then feature: the output after remove() is not the feature's own")
    check(
        after_loads == alone_loads and _in_place(pipe, row.feature),
        f"(4) apply, then feature: after remove() the feature is gone (onloads {after_loads}, "
        f"the feature alone: {alone_loads})",
    )
    check.report()


LORA_ROWS = [row for row in YES if row.feature == LORA]


@torch.no_grad()
@pytest.mark.parametrize("row", LORA_ROWS, ids=lambda r: r.id)
def test_lora_under_plan(row: Row, plain) -> None:
    """Adapters changed while a plan is applied: the plan follows the weights of each moment. disable_lora /
    enable_lora, delete_adapters and unload_lora give the plain model's plan output bit-identically (and, the plan
    removed, its output); fuse_lora gives the plan on the merged weights (within ``LORA_FUSED``), unfuse_lora the
    plan with the unfused adapters again (within ``LORA_UNFUSED``)."""
    family, setup = row.family, SETUPS[row.family]
    ref = plain(family)
    check = Problems()

    def planned(pipe: Any, handle: budcache.CacheHandle, what: str) -> torch.Tensor:
        with counting(setup.leaf(pipe.transformer)) as calls:
            out = generate(pipe, setup)
        check(
            len(calls) == B * len(setup.branches) and handle.summary() == summary_of(family, B),
            f"{what}: {len(calls)} calls, {handle.summary()}",
        )
        return out

    pipe = setup.make()
    _add_loras(pipe.transformer)
    lora_plan = executions(pipe, setup, plan_for(pipe))[0]
    merged = _merged(pipe, family)
    merged_plan = executions(merged, setup, plan_for(merged))[0]
    with budcache.apply(pipe, plan_for(pipe)) as handle:
        pipe.transformer.disable_lora()
        check(torch.equal(planned(pipe, handle, "disable_lora"), ref["plan"]), "disable_lora under the plan")
        pipe.transformer.enable_lora()
        check(torch.equal(planned(pipe, handle, "enable_lora"), lora_plan), "enable_lora under the plan")
        pipe.transformer.fuse_lora(adapter_names=list(ADAPTERS))
        fused = planned(pipe, handle, "fuse_lora")
        check(rel(fused, merged_plan) <= LORA_FUSED, f"fuse_lora under the plan: {rel(fused, merged_plan)}")
        pipe.transformer.unfuse_lora()
        unfused = planned(pipe, handle, "unfuse_lora")
        check(rel(unfused, lora_plan) <= LORA_UNFUSED, f"unfuse_lora under the plan: {rel(unfused, lora_plan)}")

    for remove_adapters in ("delete_adapters", "unload_lora"):
        pipe = setup.make()
        _add_loras(pipe.transformer)
        handle = budcache.apply(pipe, plan_for(pipe))
        if remove_adapters == "delete_adapters":
            pipe.transformer.delete_adapters(list(ADAPTERS))
        else:
            pipe.transformer.unload_lora()
        check(torch.equal(planned(pipe, handle, remove_adapters), ref["plan"]), f"{remove_adapters} under the plan")
        handle.remove()
        check(torch.equal(generate(pipe, setup), ref["full"]), f"{remove_adapters}, then remove(): not the original")
    check.report()


# --- combinations that take the plan's or the feature's hooks away ------------------------------------------------


@torch.no_grad()
@pytest.mark.parametrize("remove_adapters", ["unload_lora", "delete_adapters"])
@pytest.mark.parametrize("order", ["offload, then apply", "apply, then offload"])
def test_group_offloading_reapplied_by_lora_keeps_the_plan(order: str, remove_adapters: str, plain) -> None:
    """diffusers removes and re-applies group offloading when adapters are unloaded or deleted
    (``_maybe_remove_and_reapply_group_offloading``): with the plan applied first it goes on running B of K steps
    (FLUX); applied after the offloading, its hooks are dropped and the next generation is refused."""
    setup = SETUPS["FLUX"]
    ref = plain("FLUX")
    pipe = setup.make()
    _add_loras(pipe.transformer)
    if order.startswith("offload"):
        ENABLE[GROUP_BLOCK](pipe)
        handle = budcache.apply(pipe, plan_for(pipe))
    else:
        handle = budcache.apply(pipe, plan_for(pipe))
        ENABLE[GROUP_BLOCK](pipe)
    if remove_adapters == "delete_adapters":
        pipe.transformer.delete_adapters(list(ADAPTERS))
    else:
        pipe.transformer.unload_lora()
    if order.startswith("offload"):  # re-applied offloading drops the plan's hooks: refused, not run without them
        with pytest.raises(StateError, match="no longer in its forward"):
            generate(pipe, setup)
        handle.remove()
        return
    with counting(setup.leaf(pipe.transformer)) as calls:
        out = generate(pipe, setup)
    summary = handle.summary()
    handle.remove()
    assert (len(calls), summary) == (B, summary_of("FLUX", B)), "the plan stopped running"
    assert torch.equal(out, ref["plan"])
    assert torch.equal(generate(pipe, setup), ref["full"])


def _stream_layout(pipe: Any) -> None:
    """The hooks ``enable_group_offload(..., use_stream=True)`` builds at block level, without the stream (CPU): the
    group hooks, and on the transformer a lazy-prefetch hook with an execution tracker on every group, which its
    first call removes again (diffusers' own functions, as ``apply_group_offloading`` calls them)."""
    ENABLE[GROUP_BLOCK](pipe)
    top = pipe.transformer._diffusers_hook.get_hook(go._GROUP_OFFLOADING)
    go._apply_lazy_group_offloading_hook(pipe.transformer, top.group, config=top.config)


@torch.no_grad()
@pytest.mark.parametrize("order", ["streams, then apply", "apply, then streams"])
@pytest.mark.parametrize("family", FAMILIES)
def test_stream_prefetch_layout_keeps_the_plan(family: str, order: str, plain) -> None:
    """Group offloading with CUDA streams, its hook layout on CPU. Plan first: two generations each run B of K steps
    per branch and give the plain plan's output; removed, the offloading keeps onloading what it onloads alone.
    Streams first (not run yet): refused, since their first call re-wires the hooks."""
    setup, ref, check = SETUPS[family], plain(family), Problems()
    alone = setup.make()
    _stream_layout(alone)
    generate(alone, setup)  # the first call traces the execution order
    with onloads(alone.transformer) as alone_loads:
        generate(alone, setup)
    pipe = setup.make()
    if order.startswith("streams"):  # its first call would re-wire the plan's hooks: refused before any call
        _stream_layout(pipe)
        with pytest.raises(CacheConflictError, match="group offloading with streams has not run yet"):
            budcache.apply(pipe, plan_for(pipe))
        return
    else:
        handle = budcache.apply(pipe, plan_for(pipe))
        _stream_layout(pipe)
    for generation in (1, 2):
        out, calls = _counted(pipe, family, None)
        check(
            calls == B * len(setup.branches) and handle.summary() == summary_of(family, B),
            f"generation {generation}: {calls} block-stack executions, summary {handle.summary()}",
        )
        check(torch.equal(out, ref["plan"]), f"generation {generation}: not the plain plan's output")
    handle.remove()
    with onloads(pipe.transformer) as after_loads:
        after = generate(pipe, setup)
    check(torch.equal(after, ref["full"]), "after remove(): not the plain output")
    check(after_loads == alone_loads, f"after remove(): onloads {after_loads}, the offloading alone {alone_loads}")
    check.report()


@torch.no_grad()
@pytest.mark.parametrize("order", ["offload, then apply", "apply, then offload"])
@pytest.mark.parametrize("family", FAMILIES)
def test_model_cpu_offload_hooks_keep_the_plan(family: str, order: str, plain) -> None:
    """``enable_model_cpu_offload(device="cpu")``: accelerate's hooks as on a GPU (they move nothing here), and the
    pipeline re-installs them at the end of every call (``maybe_free_model_hooks``). Plan first: three generations
    each run B of K steps per branch; removed, the transformer's offload hook still runs in the next call. Offload
    first: the re-installed hooks drop the plan's after the first generation, and the second is refused."""
    from accelerate.hooks import CpuOffload

    setup, ref, check = SETUPS[family], plain(family), Problems()
    pipe = setup.make()
    if order.startswith("offload"):
        pipe.enable_model_cpu_offload(device="cpu")
        handle = budcache.apply(pipe, plan_for(pipe))
    else:
        handle = budcache.apply(pipe, plan_for(pipe))
        pipe.enable_model_cpu_offload(device="cpu")
    for generation in (1, 2, 3):
        if generation == 2 and order.startswith("offload"):  # the pipeline re-installed its hooks over the plan's
            with pytest.raises(StateError, match="no longer in its forward"):
                generate(pipe, setup)
            handle.remove()
            return
        out, calls = _counted(pipe, family, None)
        check(
            calls == B * len(setup.branches) and handle.summary() == summary_of(family, B),
            f"generation {generation}: {calls} block-stack executions, summary {handle.summary()}",
        )
        check(torch.equal(out, ref["plan"]), f"generation {generation}: not the plain plan's output")
    handle.remove()
    onloaded: list[torch.nn.Module] = []
    original = CpuOffload.pre_forward

    def pre_forward(self: CpuOffload, module: torch.nn.Module, *args: Any, **kwargs: Any):
        onloaded.append(module)
        return original(self, module, *args, **kwargs)

    CpuOffload.pre_forward = pre_forward
    try:
        after = generate(pipe, setup)
    finally:
        CpuOffload.pre_forward = original
    check(torch.equal(after, ref["full"]), "after remove(): not the plain output")
    check(
        any(m is pipe.transformer for m in onloaded),
        "after remove(): the transformer's offload hook did not run (accelerate's forward was taken away)",
    )
    check.report()


# --- the accelerator rows --------------------------------------------------------------------------------------------


@torch.no_grad()
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks what the reason says happens without an accelerator")
@pytest.mark.parametrize("row", ACCELERATOR, ids=lambda r: r.id)
def test_without_an_accelerator(row: Row) -> None:
    setup = SETUPS[row.family]
    pipe = setup.make()
    if row.feature == STREAMS:
        with pytest.raises(ValueError, match="requires an onload device whose backend implements streams"):
            pipe.transformer.enable_group_offload(
                onload_device=CPU,
                offload_device=CPU,
                offload_type="block_level",
                num_blocks_per_group=1,
                use_stream=True,
            )
        return
    enable = pipe.enable_model_cpu_offload if row.feature == MODEL_OFFLOAD else pipe.enable_sequential_cpu_offload
    with pytest.raises(RuntimeError, match="requires accelerator, but not found"):
        enable()
    enable(device="cpu")
    if row.feature == MODEL_OFFLOAD:
        assert hasattr(pipe.transformer, "_hf_hook")  # installed; runs (see test_model_cpu_offload_hooks_keep_the_plan)
    else:
        with pytest.raises(TypeError):  # diffusers + accelerate alone, no plan
            generate(pipe, setup)


def _on(pipe: Any, family: str, device: torch.device) -> torch.Tensor:
    """One generation with the call's tensors on ``device`` (CPU noise, as on CPU)."""
    call = {k: v.to(device) if torch.is_tensor(v) else v for k, v in SETUPS[family].call().items()}
    return pipe(
        **call,
        num_inference_steps=K,
        output_type="latent",
        generator=torch.Generator().manual_seed(0),
        return_dict=False,
    )[0]


def _enable_on(pipe: Any, feature: str, device: torch.device) -> None:
    if feature == STREAMS:
        pipe.transformer.enable_group_offload(
            onload_device=device,
            offload_device=CPU,
            offload_type="block_level",
            num_blocks_per_group=1,
            use_stream=True,
        )
    elif feature == MODEL_OFFLOAD:
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.enable_sequential_cpu_offload(device=device)


@torch.no_grad()
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("row", ACCELERATOR, ids=lambda r: r.id)
def test_accelerator_feature(row: Row) -> None:
    """On a GPU: (1) B of K executions per branch and the summary, in two generations (the feature's hooks change
    in and after the first call: streams trace the execution order and remove their trackers, model offload
    re-installs its hooks), the plan applied before any generation; (2) the all-compute plan is the feature's own
    output; (3) the plan with the feature against the same plan on the GPU without it: the same kernels, within
    float32 rounding (atol 1e-6, rtol 1e-5); (4) both orders, and after remove() the feature's own output, twice."""
    device = torch.device("cuda")
    family, setup = row.family, SETUPS[row.family]
    branches = len(setup.branches)
    check = Problems()
    plain_pipe = setup.make().to(device)
    with budcache.apply(plain_pipe, plan_for(plain_pipe)):
        plain_plan = _on(plain_pipe, family, device)

    alone_pipe = setup.make()
    _enable_on(alone_pipe, row.feature, device)
    alone = _on(alone_pipe, family, device)
    with budcache.apply(alone_pipe, plan_for(alone_pipe, [1] * K)) as handle:
        with counting(setup.leaf(alone_pipe.transformer)) as calls:
            ones = _on(alone_pipe, family, device)
        check(
            len(calls) == K * branches and handle.summary() == summary_of(family, K),
            f"(1) all-compute: {len(calls)} executions, {handle.summary()}",
        )
    check(torch.equal(ones, alone), "(2) the all-compute plan is not the feature's own output")

    for order in ("feature, then apply", "apply, then feature"):
        pipe = setup.make()
        if order.startswith("feature"):
            _enable_on(pipe, row.feature, device)
            handle = budcache.apply(pipe, plan_for(pipe))
        else:
            handle = budcache.apply(pipe, plan_for(pipe))
            _enable_on(pipe, row.feature, device)
        for generation in (1, 2):
            with counting(setup.leaf(pipe.transformer)) as calls:
                out = _on(pipe, family, device)
            check(
                len(calls) == B * branches and handle.summary() == summary_of(family, B),
                f"(1) {order}, generation {generation}: {len(calls)} executions, {handle.summary()}",
            )
            check(torch.allclose(out, plain_plan, atol=1e-6, rtol=1e-5), f"(3) {order}, generation {generation}")
        handle.remove()
        for generation in (1, 2):
            try:  # a hook taken away leaves weights on the offload device: a device mismatch
                after = _on(pipe, family, device)
            except RuntimeError as e:
                check(False, f"(4) {order}: remove(), generation {generation} raised {e}")
                continue
            check(torch.equal(after, alone), f"(4) {order}: remove(), generation {generation}: not the feature's own")
    check.report()
