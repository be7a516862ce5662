"""The composability matrix, quantization: a plan on a transformer whose Linear weights are quantized the way
diffusers users quantize them, on the tiny FLUX, Wan2.1 and Qwen-Image pipelines (CPU).

- torchao: ``quantize_(pipe.transformer, Int8WeightOnlyConfig() | Float8WeightOnlyConfig())``; each Linear keeps
  its module and gets a tensor-subclass weight (``Int8Tensor`` / ``Float8Tensor``). ``from_pretrained`` of a saved
  folder with ``TorchAoConfig(config)`` and ``torch_dtype=float32`` gives the same model (checked below).
  Float8 weight-only runs on CPU: without activation quantization torchao's ``Float8Tensor`` dequantizes the
  weight and runs a plain matmul, on any device (no float8 kernel involved).
- optimum-quanto: ``quantize(transformer, weights=qint8); freeze(transformer)``; every Linear is *replaced* by a
  ``QLinear`` module inside its block (diffusers' deprecated ``QuantoConfig`` gives the same model, checked below).
- GGUF: a Q8_0 checkpoint written here (``tests/fixtures/gguf_file.py``) and loaded with ``from_single_file(...,
  quantization_config=GGUFQuantizationConfig(compute_dtype=float32), config=<local folder>)``; the loader builds
  ``GGUFLinear`` modules that dequantize their weight at every call. Q8_0 packs rows in blocks of 32, so only weights
  whose input width is a multiple of 32 are Q8_0: all but FLUX's ``x_embedder``, but in Wan2.1 (width 24) and
  Qwen-Image (width 48) only a few (each block's ``ffn.net.2`` / ``img_mlp.net.2`` / ``txt_mlp.net.2``); every
  block of every stack holds at least one quantized Linear (asserted).

The checks, per row: exactly B of K block-stack executions per branch and the summary; the all-compute plan gives
the quantized model's own output bit-identically; the B-step plan on the quantized model against the same plan on the
unquantized one (tolerance below); apply then remove, and (torchao, quanto) quantize after apply, then remove:
the output of the quantized model without a plan comes back bit-identically.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import budcache
from budcache.hooks.stack import transformer_blocks
from tests.fixtures.composability import FAMILIES, MASK, SETUPS, K, Row, counting, executions, generate, plan_for

TORCHAO_INT8 = "torchao int8 weight-only"
TORCHAO_FP8 = "torchao float8 weight-only"
QUANTO_INT8 = "optimum-quanto int8 weights"
GGUF_Q8 = "GGUF checkpoint (from_single_file, Q8_0)"

_WHY = (
    "quantized weights: the plan on the quantized model vs on the unquantized one differs by at most 1.5x what "
    "quantization changes at full compute (measured 0.96-1.05x); all-compute plan bit-identical; quantizing "
    "before or after apply alike"
)
ROWS: list[Row] = [
    Row(feature, family, "yes", _WHY)
    for feature in (TORCHAO_INT8, TORCHAO_FP8, QUANTO_INT8, GGUF_Q8)
    for family in FAMILIES
]
YES = [row for row in ROWS if row.status == "yes"]
IN_PLACE = [row for row in YES if row.feature != GGUF_Q8]  # quantized on a live model: also after apply

# The B-step plan on the quantized model against the same plan on the unquantized one: quantization changes the
# weights, so the two differ by the quantization error, which the plan neither removes nor amplifies. Measured
# (relative L2 of the final latents): the ratio of that difference to the full-compute one (quantized vs
# unquantized, no plan) lies in 0.96 .. 1.05 over the 12 rows; allowed: up to 1.5. The plan's own deviation
# from full compute (reused steps) is the same on both models: measured ratios 0.99 .. 1.01; allowed 0.8 .. 1.25.
QUANT_RATIO = 1.5
CACHE_RATIO = (0.8, 1.25)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


# --- quantizing ------------------------------------------------------------------------------------------------------


def _torchao(config: str) -> Callable[[Any, Path], None]:
    def quantize(pipe: Any, folder: Path) -> None:
        pytest.importorskip("torchao")
        import torchao.quantization as tq

        tq.quantize_(pipe.transformer, getattr(tq, config)())

    return quantize


def _quanto(pipe: Any, folder: Path) -> None:
    pytest.importorskip("optimum.quanto")
    from optimum.quanto import freeze, qint8, quantize

    quantize(pipe.transformer, weights=qint8)
    freeze(pipe.transformer)


def _gguf(pipe: Any, folder: Path) -> None:
    pytest.importorskip("gguf")
    from tests.fixtures.gguf_file import load_gguf

    pipe.transformer, types = load_gguf(pipe.transformer, folder)
    assert "Q8_0" in types.values()


QUANTIZE = {
    TORCHAO_INT8: _torchao("Int8WeightOnlyConfig"),
    TORCHAO_FP8: _torchao("Float8WeightOnlyConfig"),
    QUANTO_INT8: _quanto,
    GGUF_Q8: _gguf,
}


def _is_quantized(module: torch.nn.Module, feature: str) -> bool:
    """Whether ``module`` is a Linear whose weight ``feature`` quantized."""
    if feature in (TORCHAO_INT8, TORCHAO_FP8):
        from torchao.utils import TorchAOBaseTensor

        return isinstance(module, torch.nn.Linear) and isinstance(module.weight, TorchAOBaseTensor)
    if feature == QUANTO_INT8:
        from optimum.quanto import QLinear

        return isinstance(module, QLinear)
    from diffusers.quantizers.gguf.utils import GGUFLinear, GGUFParameter

    return isinstance(module, GGUFLinear) and isinstance(module.weight, GGUFParameter)


def assert_quantized_blocks(transformer: torch.nn.Module, feature: str) -> None:
    """Every block of the stack holds a quantized Linear (else the row would test nothing)."""
    blocks = transformer_blocks(transformer)
    assert blocks and all(any(_is_quantized(m, feature) for m in block.modules()) for block in blocks)


def _diffusers_config(feature: str) -> Any:
    """diffusers' quantization config of ``feature`` (torchao, quanto) for ``from_pretrained``."""
    if feature == QUANTO_INT8:
        from diffusers import QuantoConfig

        return QuantoConfig(weights_dtype="int8")
    import torchao.quantization as tq
    from diffusers import TorchAoConfig

    return TorchAoConfig(tq.Int8WeightOnlyConfig() if feature == TORCHAO_INT8 else tq.Float8WeightOnlyConfig())


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str | None], dict[str, Any]]:
    """Per (feature, family), built once: the quantized pipeline with its outputs without a plan (``full``), under
    the all-compute plan (``ones``) and under ``MASK`` (``plan``: latents, executions, summary); feature None: the
    unquantized pipeline's ``full`` and ``plan``."""
    cache: dict[tuple[str | None, str], dict[str, Any]] = {}

    def get(family: str, feature: str | None = None) -> dict[str, Any]:
        if (feature, family) not in cache:
            setup = SETUPS[family]
            pipe = setup.make()
            if feature is not None:
                QUANTIZE[feature](pipe, tmp_path_factory.mktemp("quant"))
                assert_quantized_blocks(pipe.transformer, feature)
            entry = dict(pipe=pipe, full=generate(pipe, setup), plan=executions(pipe, setup, plan_for(pipe)))
            if feature is not None:
                entry["ones"] = executions(pipe, setup, plan_for(pipe, [1] * K))
            cache[feature, family] = entry
        return cache[feature, family]

    return get


# --- the checks ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("row", YES, ids=lambda r: r.id)
def test_plan_on_quantized_transformer(row: Row, built) -> None:
    setup, B = SETUPS[row.family], sum(MASK)
    plain, quant = built(row.family), built(row.family, row.feature)
    pipe = quant["pipe"]

    # (1) exactly B block-stack executions per branch, and the summary
    out, calls, summary = quant["plan"]
    assert calls == B * len(setup.branches)
    assert summary == {b: {"computed": B, "reused": K - B} for b in setup.branches}
    ones, calls, summary = quant["ones"]
    assert calls == K * len(setup.branches)
    assert summary == {b: {"computed": K, "reused": 0} for b in setup.branches}

    # (2) the all-compute plan is the quantized model itself, bit for bit
    assert torch.equal(ones, quant["full"])

    # (3) the B-step plan on the quantized model against the same plan unquantized: off by the quantization error
    quant_full = rel(quant["full"], plain["full"])
    quant_plan = rel(out, plain["plan"][0])
    assert quant_full > 0, "the quantization changed nothing"
    assert quant_plan <= QUANT_RATIO * quant_full, (quant_plan, quant_full)
    cache_ratio = rel(out, quant["full"]) / rel(plain["plan"][0], plain["full"])
    assert CACHE_RATIO[0] <= cache_ratio <= CACHE_RATIO[1], cache_ratio

    # (4) quantize, then apply: the same again, and remove() restores the quantized model's own output
    with budcache.apply(pipe, plan_for(pipe)), counting(setup.leaf(pipe.transformer)) as leaf_calls:
        again = generate(pipe, setup)
    assert torch.equal(again, out) and len(leaf_calls) == B * len(setup.branches)
    assert torch.equal(generate(pipe, setup), quant["full"])  # handle.remove() on leaving the with block
    budcache.apply(pipe, plan_for(pipe))
    budcache.remove(pipe)
    assert torch.equal(generate(pipe, setup), quant["full"])


@pytest.mark.parametrize("row", IN_PLACE, ids=lambda r: r.id)
def test_quantize_after_apply(row: Row, built, tmp_path: Path) -> None:
    """The plan applied first, the transformer quantized under it: the block hooks are per-instance ``forward``s of
    the blocks, which quantization keeps (torchao swaps the Linear weights, quanto swaps the Linear modules inside
    the blocks): the plan runs on the quantized weights exactly as when applied after quantizing."""
    setup, B = SETUPS[row.family], sum(MASK)
    quant = built(row.family, row.feature)
    pipe = setup.make()
    handle = budcache.apply(pipe, plan_for(pipe))
    QUANTIZE[row.feature](pipe, tmp_path)
    assert_quantized_blocks(pipe.transformer, row.feature)
    with counting(setup.leaf(pipe.transformer)) as calls:
        out = generate(pipe, setup)
    assert len(calls) == B * len(setup.branches)
    assert handle.summary() == {b: {"computed": B, "reused": K - B} for b in setup.branches}
    assert torch.equal(out, quant["plan"][0])
    handle.remove()
    assert torch.equal(generate(pipe, setup), quant["full"])


@pytest.mark.parametrize("feature", [TORCHAO_INT8, TORCHAO_FP8, QUANTO_INT8])
def test_diffusers_quantization_config_is_the_same_model(feature: str, built, tmp_path: Path) -> None:
    """``from_pretrained(saved folder, quantization_config=TorchAoConfig(...) | QuantoConfig(...))`` quantizes to
    the same model as the direct calls the rows use (FLUX): what holds for one holds for the other."""
    setup = SETUPS["FLUX"]
    pipe = setup.make()
    pipe.transformer.save_pretrained(tmp_path)
    pytest.importorskip("optimum.quanto" if feature == QUANTO_INT8 else "torchao")
    # diffusers deprecates its quanto backend (QuantoConfig, QuantoQuantizer: removal planned for 1.0)
    deprecated = pytest.warns(FutureWarning, match="deprecated") if feature == QUANTO_INT8 else contextlib.nullcontext()
    with deprecated:  # torch_dtype: without it diffusers loads a torchao model in bfloat16; the pipeline runs float32
        config = _diffusers_config(feature)
        pipe.transformer = type(pipe.transformer).from_pretrained(
            tmp_path, quantization_config=config, torch_dtype=torch.float32, local_files_only=True
        )
    assert_quantized_blocks(pipe.transformer, feature)
    assert torch.equal(generate(pipe, setup), built("FLUX", feature)["full"])
    assert torch.equal(executions(pipe, setup, plan_for(pipe))[0], built("FLUX", feature)["plan"][0])
