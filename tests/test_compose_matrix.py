"""The composability matrix of docs/compile-and-composability.md is the test modules' rows, and what cannot compose
is refused."""

from __future__ import annotations

import copy

import pytest
import torch

import budcache
from budcache.errors import StateError
from tests.fixtures.composability import DOCS_PAGE, SETUPS, generate, plan_for, rows, table


def test_the_documented_matrix_is_the_tests_rows():
    """``python -m tests.fixtures.composability`` prints the table docs/compile-and-composability.md holds."""
    assert table(rows()) in DOCS_PAGE.read_text()


def test_every_feature_is_checked_on_flux_and_wan():
    features = {r.feature for r in rows()}
    for feature in features:
        assert {r.family for r in rows() if r.feature == feature} >= {"FLUX", "Wan2.1"}, feature


@torch.no_grad()
def test_blocks_replaced_after_apply_are_refused_with_the_order_that_works():
    """A wrapper that puts other modules in place of the blocks after the plan was applied would run them
    unskipped: the next generation is refused, naming the order that works, and works once it is followed."""
    family = SETUPS["FLUX"]
    pipe = family.make()
    plan = plan_for(pipe)
    blocks = pipe.transformer.transformer_blocks
    replacement = copy.deepcopy(blocks[0])  # what a wrapper would put there
    handle = budcache.apply(pipe, plan)
    blocks[0] = replacement
    with pytest.raises(StateError, match=r"blocks were replaced after budcache.apply.*remove the plan"):
        generate(pipe, family)
    handle.remove()
    with budcache.apply(pipe, plan) as handle:
        generate(pipe, family)
        assert handle.summary() == {"cond": {"computed": 3, "reused": 3}}


@torch.no_grad()
def test_a_transformer_swapped_after_apply_is_refused_until_the_plan_is_removed():
    """Loading another transformer into the pipeline after apply (a quantized or GGUF one) would run it without
    the plan: the next generation is refused, so is a second plan while the first still holds the scheduler."""
    from budcache.errors import CacheConflictError

    family = SETUPS["FLUX"]
    pipe = family.make()
    other = copy.deepcopy(pipe.transformer)
    plan = plan_for(pipe)
    handle = budcache.apply(pipe, plan)
    pipe.transformer = other
    with pytest.raises(StateError, match=r"pipe.transformer was replaced after budcache.apply.*handle.remove"):
        generate(pipe, family)
    with pytest.raises(CacheConflictError, match=r"pipe.scheduler: a budcache plan is still applied"):
        budcache.apply(pipe, plan)
    handle.remove()
    with budcache.apply(pipe, plan) as handle:
        generate(pipe, family)
        assert handle.summary() == {"cond": {"computed": 3, "reused": 3}}
