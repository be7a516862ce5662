"""Plans under torch.compile (fullgraph=True) on tiny FLUX, Wan2.1 (CFG) and Wan2.2 (two experts)
pipelines, with CPU backends: no graph break, the eager plan's output, a bounded number of graphs that
stops growing after the first generation, both orders of apply and compile, and remove()."""

import pytest
import torch

import budcache
from budcache.plan import CachePlan, uniform_mask
from tests.fixtures.compiled import CountingBackend, compile_pipe, record_syncs_in_calls
from tests.fixtures.tiny import tiny_flux_pipeline, tiny_flux_transformer, tiny_wan_pipeline
from tests.fixtures.tiny_families import wan22_call_kwargs, wan22_pipeline

K = 6


def flux():
    pipe = tiny_flux_pipeline(tiny_flux_transformer(layers=3))  # heads and other blocks, in two segments
    kwargs = dict(
        prompt_embeds=torch.ones(1, 8, 32), pooled_prompt_embeds=torch.ones(1, 32), height=8, width=8, output_type="pt"
    )
    return pipe, kwargs, "images"


def wan():
    pipe = tiny_wan_pipeline()
    kwargs = dict(
        prompt_embeds=torch.ones(1, 8, 32),
        negative_prompt_embeds=torch.zeros(1, 8, 32),
        height=16,
        width=16,
        num_frames=5,
        guidance_scale=5.0,
        output_type="pt",
    )
    return pipe, kwargs, "frames"


def wan22():
    kwargs = wan22_call_kwargs()  # latents out
    kwargs.pop("generator")
    return wan22_pipeline(), kwargs, "frames"


PIPES = {"flux": flux, "wan": wan, "wan22": wan22}


def generate(pipe, kwargs, field):
    return getattr(pipe(**kwargs, num_inference_steps=K, generator=torch.Generator().manual_seed(0)), field)


def plan_for(pipe, kwargs, field, reuse, rule):
    """A B=3 plan; with two experts it also computes the first step of the second one."""
    mask = uniform_mask(K, 3)
    boundary = pipe.config.get("boundary_ratio") if getattr(pipe, "transformer_2", None) is not None else None
    if boundary is not None:
        calls = []
        hook = pipe.transformer.register_forward_pre_hook(lambda *a: calls.append(1))
        generate(pipe, kwargs, field)
        hook.remove()
        switch = len(calls) // 2  # cond + uncond per step
        mask = [1 if k in (0, switch, K - 2) else 0 for k in range(K)]
    return CachePlan(num_steps=K, budget=sum(mask), mask=mask, reuse=reuse, rule=rule, boundary_ratio=boundary)


CASES = [  # (pipeline, how, backend, reuse, rule)
    ("flux", "regional", "aot_eager", "residual", "repeat"),
    ("flux", "whole", "aot_eager", "residual", "extrapolate"),
    ("flux", "regional", "eager", "output", "extrapolate"),
    ("flux", "whole", "eager", "output", "repeat"),
    ("wan", "regional", "aot_eager", "residual", "extrapolate"),
    ("wan", "whole", "aot_eager", "residual", "repeat"),
    ("wan22", "regional", "eager", "residual", "extrapolate"),
    ("wan22", "whole", "aot_eager", "residual", "extrapolate2"),
]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@torch.no_grad()
@pytest.mark.parametrize("name, how, backend_name, reuse, rule", CASES)
def test_compiled_plan_matches_eager_plan(name, how, backend_name, reuse, rule):
    pipe, kwargs, field = PIPES[name]()
    plan = plan_for(pipe, kwargs, field, reuse, rule)
    with budcache.apply(pipe, plan) as handle:
        eager = generate(pipe, kwargs, field)
        summary = handle.summary()
    backend = CountingBackend(backend_name)
    compile_pipe(pipe, how, backend)
    full = generate(pipe, kwargs, field)
    with budcache.apply(pipe, plan) as handle:
        before = backend.graphs
        compiled = generate(pipe, kwargs, field)
        graphs = backend.graphs - before
        assert torch.equal(generate(pipe, kwargs, field), compiled)
        assert backend.graphs - before == graphs, "a second generation compiled again"
        assert handle.summary() == summary
    experts = 2 if name == "wan22" else 1
    # residual: one graph per mode (compute, reuse) and per kind of compiled region: the whole transformer,
    # or a segment's head and its other blocks (FLUX: two segments); output: reused steps skip the call
    kinds = 1 if how == "whole" else 2 * (2 if name == "flux" else 1)
    assert 0 < graphs <= 2 * kinds * experts if reuse == "residual" else graphs <= experts
    assert torch.allclose(compiled, eager, atol=1e-5, rtol=1e-4)
    before = backend.graphs
    assert torch.allclose(generate(pipe, kwargs, field), full, atol=1e-6)  # removed: compiled and uncached again
    assert backend.graphs == before


@torch.no_grad()
@pytest.mark.parametrize("name", ["flux", "wan22"])
def test_apply_then_compile_blocks(name):
    """Regional compilation after apply: the blocks' hooks are compiled with them."""
    pipe, kwargs, field = PIPES[name]()
    plan = plan_for(pipe, kwargs, field, "residual", "extrapolate")
    with budcache.apply(pipe, plan):
        eager = generate(pipe, kwargs, field)
        backend = CountingBackend("aot_eager")
        compile_pipe(pipe, "regional", backend)
        compiled = generate(pipe, kwargs, field)
        graphs = backend.graphs
        generate(pipe, kwargs, field)
        assert backend.graphs == graphs > 0
    assert torch.allclose(compiled, eager, atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_whole_compile_after_apply_is_refused_with_the_order_to_use():
    """fullgraph=True cannot compile the plan hook: refused with the order to use; fullgraph=False
    runs the hook eagerly (a graph break at the top) and compiles the transformer inside it."""
    pipe, kwargs, field = flux()
    plan = plan_for(pipe, kwargs, field, "residual", "repeat")
    with budcache.apply(pipe, plan):
        eager = generate(pipe, kwargs, field)
        compile_pipe(pipe, "whole", CountingBackend())
        with pytest.raises(Exception, match="Compile first, then apply"):
            generate(pipe, kwargs, field)
        pipe.transformer = torch.compile(pipe.transformer._orig_mod, backend=CountingBackend())
        assert torch.equal(generate(pipe, kwargs, field), eager)
    pipe.transformer = pipe.transformer._orig_mod
    pipe.transformer.compile(fullgraph=True, backend=CountingBackend())
    with pytest.raises(RuntimeError, match="compiled whole in place"):
        budcache.apply(pipe, plan)


@torch.no_grad()
@pytest.mark.parametrize("name", ["flux", "wan", "wan22"])
def test_no_host_read_of_a_tensor_in_a_transformer_call(name):
    """Inside a pipeline the plan reads no tensor value per step (on a GPU: no synchronisation):
    the transformer calls read as many tensor values with a plan as without."""
    pipe, kwargs, field = PIPES[name]()
    counts = {}
    for label, plan in (
        ("none", None),
        ("plan", plan_for(pipe, kwargs, field, "residual", "extrapolate")),
        ("output", plan_for(pipe, kwargs, field, "output", "extrapolate")),
    ):
        handle = budcache.apply(pipe, plan) if plan else None
        recorders = [record_syncs_in_calls(m) for m in (pipe.transformer, getattr(pipe, "transformer_2", None)) if m]
        generate(pipe, kwargs, field)
        counts[label] = sorted(c for r, _ in recorders for c in r.calls)
        for _, handles in recorders:
            for h in handles:
                h.remove()
        if handle:
            handle.remove()
    assert counts["plan"] == counts["none"] and counts["output"] == counts["none"]


def test_host_sigmas_are_read_without_touching_the_device_tensors():
    """A scheduler whose sigmas live on another device (here: ``meta``, which has no values at all)
    still gives the plan its sigmas as Python floats."""
    pipe, kwargs, field = flux()
    plan = CachePlan(num_steps=K, budget=3, mask=uniform_mask(K, 3), rule="extrapolate")
    reference = type(pipe.scheduler).from_config(pipe.scheduler.config)
    reference.set_timesteps(K, mu=0.8)
    with budcache.apply(pipe, plan) as handle:
        pipe.scheduler.set_timesteps(K, device="meta", mu=0.8)
        assert pipe.scheduler.sigmas.device.type == "meta"
        assert handle.run.sigmas == reference.sigmas.tolist()
