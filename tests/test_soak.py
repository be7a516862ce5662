"""The soak (bench/soak.py) in small: 40 pipeline calls of every kind (single plans, plan sets served by
budget and step count, plain calls, soft and hard interrupts, exceptions inside the transformer,
apply/remove cycles) after its warm-up over every setting; every output is bit-exact with a fresh
reference. Memory and speed are the full soak's business, not asserted here."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def soak_module():
    spec = importlib.util.spec_from_file_location("bench_soak", ROOT / "bench" / "soak.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_soak_outputs_are_bit_exact_across_every_kind_of_call(soak_module):
    threads = torch.get_num_threads()
    try:
        result = soak_module.soak(40, seed=1, gc_every=0, interrupt_probes=0, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert result["generations"] >= 40
    assert set(result["kinds"]) == set(soak_module.KINDS)  # every kind of step ran
    assert result["events"]["apply"] > 0 and result["events"]["remove"] > 0
    assert result["compared_outputs"] > result["distinct_settings"]  # the warm-up's and the soak's
    assert result["differing_outputs"] == 0, result["differences"]
    assert not result["errors"], result["errors"]
    assert not result["summary_mismatches"], result["summary_mismatches"]
    assert not result["contract_violations"], result["contract_violations"]
    assert not result["cache_leaks"], result["cache_leaks"]


def test_soak_reports_a_differing_output(soak_module, monkeypatch):
    """The check is not vacuous: a reference off by 1e-6 is a differing output, reported with its setting and
    the calls before it."""
    reference = soak_module.Soak.reference
    monkeypatch.setattr(soak_module.Soak, "reference", lambda self, s: reference(self, s) + 1e-6)
    with torch.no_grad():
        soak = soak_module.Soak(seed=0)
        soak.generate(soak_module.Setting("set-res", 8, 3), "test")
    assert len(soak.differences) == 1 and soak.compared == 1
    first = soak.differences[0]
    assert first["setting"].startswith("set-res K=8 B=3") and first["max_abs_diff"] > 0
    assert any("apply set-res" in line for line in first["recent"])
