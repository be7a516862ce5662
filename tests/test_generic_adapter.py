"""The generic block-stack adapter reproduces the per-model residual reuse it replaced."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.fixtures.residual_cases import cases, run

REFERENCE = Path(__file__).parent / "data" / "residual_reference.safetensors"  # taken before the change


@pytest.mark.parametrize("rule", ["repeat", "extrapolate"])
def test_same_outputs_as_before_the_generic_adapter(rule):
    reference = load_file(REFERENCE)
    for name, pipe, kwargs in cases():
        x = run(pipe, kwargs, rule)
        x = torch.stack(list(x)) if isinstance(x, list) else x
        torch.testing.assert_close(x, reference[f"{name}/{rule}"], rtol=1e-5, atol=1e-5, msg=name)


def test_unknown_blocks_apply_as_output_reuse_with_a_warning(monkeypatch):
    """A residual plan on a transformer whose blocks budcache does not know skips whole calls."""
    from budcache import apply, families
    from budcache.plan import CachePlan
    from tests.fixtures import tiny_families

    monkeypatch.delitem(families.OWN_BLOCKS, "SanaTransformerBlock")
    family = tiny_families.FAMILIES["sana"]
    pipe, kwargs = family.pipeline(), family.call_kwargs(seed=0)
    calls = []
    hook = pipe.transformer.transformer_blocks[0].register_forward_hook(lambda *a: calls.append(1))
    plan = CachePlan(num_steps=6, budget=3, mask=[1, 0, 1, 0, 1, 0], reuse="residual")
    with pytest.warns(UserWarning, match="falling back to output reuse"):
        handle = apply(pipe, plan)
    with handle:
        pipe(**kwargs, num_inference_steps=6)
        assert handle.summary() == {"default": {"computed": 3, "reused": 3}}
    hook.remove()
    assert len(calls) == 3
