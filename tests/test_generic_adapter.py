"""The generic block-stack adapter reproduces the per-model residual reuse it replaced."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from residual_cases import cases, run

REFERENCE = Path(__file__).parent / "data" / "residual_reference.safetensors"  # taken before the change


@pytest.mark.parametrize("rule", ["repeat", "extrapolate"])
def test_same_outputs_as_before_the_generic_adapter(rule):
    reference = load_file(REFERENCE)
    for name, pipe, kwargs in cases():
        x = run(pipe, kwargs, rule)
        x = torch.stack(list(x)) if isinstance(x, list) else x
        torch.testing.assert_close(x, reference[f"{name}/{rule}"], rtol=1e-5, atol=1e-5, msg=name)
