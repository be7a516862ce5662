"""Differential tests: budcache's residual reuse against diffusers' own block-cache hooks at the same step mask.

diffusers' MagCache and FirstBlockCache decide per step whether the transformer blocks run (by accumulated magnitude
ratios, by the change of the first block's residual) and, where they do not, add a cached residual to the block-stack
input. budcache makes the same skip from a fixed mask. Each test runs the pipeline under the peer's hook, reads off
which steps it computed (a probe inside the *second* block: FirstBlockCache always runs the first), builds that mask
as a ``repeat`` / ``residual`` plan and runs the same call under ``budcache.apply``; the final latents and the
transformer's output at every call must agree. FLUX, Wan2.1 and Qwen-Image (all three in diffusers'
``TransformerBlockRegistry``), each in float32 and in bfloat16 (``pipe.to(torch.bfloat16)``).
"""

# Tolerances. Where budcache and the peer do the same float operations the results are bitwise equal, in float32
# and in bfloat16, and the tests say so with torch.equal: every case whose cached stack is one block list (Wan,
# Qwen-Image; FLUX under FirstBlockCache, whose one double block stays outside the cache). FLUX under MagCache
# caches two block lists: budcache keeps one residual per list and adds them one after the other,
# (h + r_double) + r_single, where MagCache adds the whole stack's residual once, h + (r_double + r_single):
# equal in exact arithmetic, rounded differently. Over 48 tiny FLUX set-ups (1-3 blocks per list, weight seeds 0-3,
# MagCache thresholds 0.06 and 0.2, with and without CFG) the difference was at most 1.8 eps * max|peer| on the
# latents and 3.3 eps * max|peer| on the transformer outputs, in float64, float32 and bfloat16 alike (eps of the
# dtype): rounding at the working precision, whence TOLERANCE_EPS = 8 in any dtype. Here (float32: eps = 2**-23)
# 4.8e-7 on latents of scale 3.6 (1.1 eps) and 3.0e-7 on outputs of scale 1.0 (2.5 eps); in bfloat16 (eps = 2**-7)
# 0.016 (0.55 eps) and 0.011 (1.4 eps). In bfloat16 that bound tests nothing about the caching on the FLUX *latents*
# (the pipeline rounds them to bfloat16 every step, and output reuse at the same mask lies only 1.2-1.7 eps from
# MagCache there), hence the transformer output of every call, where output reuse lies 13-14 eps away.

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from diffusers.hooks import FirstBlockCacheConfig, MagCacheConfig
from diffusers.hooks._common import _ALL_TRANSFORMER_BLOCK_IDENTIFIERS
from diffusers.hooks.mag_cache import FLUX_MAG_RATIOS
from torch import nn

import budcache
from budcache.plan import CachePlan
from tests.fixtures.tiny import tiny_flux_pipeline, tiny_wan_pipeline
from tests.fixtures.tiny_families import qwen_image_call_kwargs, qwen_image_pipeline

STEPS = 10
TOLERANCE_EPS = 8
DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])


def _flux_call(cfg: bool) -> dict[str, Any]:
    """16x16 images (64 tokens); with ``cfg`` FLUX's true CFG (negative embeddings, scale 4: two calls per step)."""
    gen = torch.Generator().manual_seed(1)
    kwargs = dict(
        prompt_embeds=torch.randn(1, 8, 32, generator=gen), pooled_prompt_embeds=torch.randn(1, 32, generator=gen)
    )
    if cfg:
        kwargs.update(
            negative_prompt_embeds=torch.randn(1, 8, 32, generator=gen),
            negative_pooled_prompt_embeds=torch.randn(1, 32, generator=gen),
            true_cfg_scale=4.0,
        )
    return kwargs | dict(height=16, width=16, generator=gen, output_type="latent")


def _wan_call(cfg: bool) -> dict[str, Any]:
    """16x16, 5 frames; ``cfg``: guidance 5 (two calls per step), else 1 (one)."""
    gen = torch.Generator().manual_seed(1)
    return dict(
        prompt_embeds=torch.randn(1, 8, 32, generator=gen),
        negative_prompt_embeds=torch.randn(1, 8, 32, generator=gen),
        height=16,
        width=16,
        num_frames=5,
        guidance_scale=5.0 if cfg else 1.0,
        generator=gen,
        output_type="latent",
    )


@dataclass(frozen=True)
class Family:
    """A tiny pipeline, its call kwargs (``cfg``: with classifier-free guidance) and a FirstBlockCache threshold
    that skips several of the ``STEPS`` steps without CFG."""

    name: str
    pipeline: Callable[[], Any]
    call: Callable[[bool], dict[str, Any]]
    fbc_threshold: float


FAMILIES = [
    Family("flux", tiny_flux_pipeline, _flux_call, 0.4),
    Family("wan", tiny_wan_pipeline, _wan_call, 0.1),
    Family("qwen_image", qwen_image_pipeline, lambda cfg: qwen_image_call_kwargs(cfg=cfg), 0.4),
]
FAMILY = pytest.mark.parametrize("family", FAMILIES, ids=[family.name for family in FAMILIES])


@dataclass
class Run:
    """One pipeline call: its final latents, the transformer's output at every call (stacked), and per call
    whether the block stack computed."""

    latents: torch.Tensor
    outputs: torch.Tensor
    computed: list[bool]


def _block_lists(transformer: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """The non-empty block lists, in the order diffusers' cache hooks and budcache walk them."""
    return [
        (name, child)
        for name, child in transformer.named_children()
        if name in _ALL_TRANSFORMER_BLOCK_IDENTIFIERS and isinstance(child, nn.ModuleList) and len(child)
    ]


def _cached_lists(transformer: nn.Module, first_block_outside: bool = False) -> int:
    """How many block lists budcache caches, one residual each: the non-empty ones, without the first block
    where it stays outside the cache."""
    sizes = [len(blocks) for _, blocks in _block_lists(transformer)]
    sizes[0] -= first_block_outside
    return sum(size > 0 for size in sizes)


def _run(pipe: Any, kwargs: dict[str, Any], dtype: torch.dtype) -> Run:
    """Run ``STEPS`` steps with the floating-point kwargs in ``dtype``; a probe on the first linear layer of the
    second block tells whether the stack ran (on a skipped call no block after the first runs, in either library)."""
    kwargs = {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in kwargs.items()}
    second = [block for _, blocks in _block_lists(pipe.transformer) for block in blocks][1]
    probe = next(module for module in second.modules() if isinstance(module, nn.Linear))
    fired, computed, outputs = [], [], []

    def record(module: nn.Module, args: tuple, output: tuple) -> None:
        computed.append(bool(fired))
        outputs.append(output[0].clone())
        fired.clear()

    hooks = [probe.register_forward_hook(lambda *_: fired.append(True)), pipe.transformer.register_forward_hook(record)]
    try:
        latents = pipe(**kwargs, num_inference_steps=STEPS, return_dict=False)[0]
    finally:
        for hook in hooks:
            hook.remove()
    return Run(latents, torch.stack(outputs), computed)


def _plan(run: Run) -> CachePlan:
    """The peer's mask as a plan: the same on every CFG branch (asserted), with computed and skipped steps."""
    per_step = len(run.computed) // STEPS
    branches = {tuple(run.computed[i::per_step]) for i in range(per_step)}
    assert len(branches) == 1, f"the branches computed different steps: {branches}"
    mask = [int(c) for c in branches.pop()]
    assert mask.count(0) >= 2 and mask.count(1) >= 2, f"the peer must compute and skip several steps, mask {mask}"
    return CachePlan(num_steps=STEPS, budget=sum(mask), mask=mask, rule="repeat", reuse="residual")


def _assert_agree(ours: Run, peer: Run, lists: int) -> None:
    """Bitwise equal where budcache caches ``lists == 1`` block list; else within ``TOLERANCE_EPS`` eps of the peer's
    largest magnitude (see the tolerance note at the top)."""
    for name in ("latents", "outputs"):
        a, b = getattr(ours, name), getattr(peer, name)
        diff = (a.double() - b.double()).abs().max().item()
        if lists == 1:
            assert torch.equal(a, b), f"{name}: max difference {diff:.3g}"
        else:
            tolerance = TOLERANCE_EPS * torch.finfo(b.dtype).eps * b.abs().max().item()
            assert diff <= tolerance, f"{name}: max difference {diff:.3g} > {tolerance:.3g}"


def _apply_after_first_block(pipe: Any, plan: CachePlan) -> budcache.CacheHandle:
    """``budcache.apply`` with the transformer's first block outside the cached stack, as in FirstBlockCache:
    budcache hooks the blocks of the lists it finds when applied, so the first block, out of its list for that
    moment and put back, runs on every step and the cache spans the blocks after it."""
    transformer = pipe.transformer
    name, blocks = _block_lists(transformer)[0]
    setattr(transformer, name, nn.ModuleList(list(blocks)[1:]))
    try:
        return budcache.apply(pipe, plan)
    finally:
        setattr(transformer, name, blocks)


@DTYPES
@FAMILY
def test_mag_cache_equals_residual_reuse_at_its_mask(family, dtype):
    """MagCache skips the whole stack, head block included: on a skipped call the stack returns its input plus
    ``tail_out - head_in`` of its branch's last computed call, as budcache does. Its decisions depend only on the
    step (the magnitude ratios, here FLUX's interpolated to 10 steps, threshold, retention and ``max_skip_steps``),
    so both CFG branches skip alike and the calls run with CFG. MagCache leaves the text stream of a skipped call as
    it came in where budcache adds its residual; nothing reads it after the last block, so the outputs cannot
    differ by it."""
    pipe = family.pipeline().to(dtype)
    pipe.transformer.enable_cache(MagCacheConfig(num_inference_steps=STEPS, mag_ratios=FLUX_MAG_RATIOS))
    peer = _run(pipe, family.call(True), dtype)
    pipe.transformer.disable_cache()
    with budcache.apply(pipe, _plan(peer)):
        ours = _run(pipe, family.call(True), dtype)
    _assert_agree(ours, peer, lists=_cached_lists(pipe.transformer))


@DTYPES
@FAMILY
def test_first_block_cache_equals_residual_reuse_after_the_first_block(family, dtype):
    """FirstBlockCache runs the first block on every call (its residual decides) and on a skipped call adds the
    cached ``tail_out - first_out`` to the first block's *fresh* output; budcache over the whole stack adds
    ``tail_out - head_in`` to the stack input instead, which differs by how much the first block's residual changed
    since the last computed call. So the comparable budcache run keeps the first block outside its cache (and the
    whole-stack run is checked to differ). FirstBlockCache decides per CFG branch, and the branches disagree (in
    bfloat16 at these thresholds, FLUX's and Wan's), while a plan has one mask for all branches: the calls run
    without CFG."""
    pipe = family.pipeline().to(dtype)
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=family.fbc_threshold))
    peer = _run(pipe, family.call(False), dtype)
    pipe.transformer.disable_cache()
    plan = _plan(peer)
    with _apply_after_first_block(pipe, plan):
        ours = _run(pipe, family.call(False), dtype)
    _assert_agree(ours, peer, lists=_cached_lists(pipe.transformer, first_block_outside=True))
    with budcache.apply(pipe, plan):
        whole = _run(pipe, family.call(False), dtype)
    assert not torch.equal(whole.outputs, peer.outputs)
