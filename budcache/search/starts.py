"""The named start masks of ``SearchConfig.start``, each with the fixed steps switched on."""

from __future__ import annotations

import math

from ..sampling.rules import decode, encode, rule_of
from .moves import Mask, endpoints_mask, random_mask, warped_mask, with_fixed
from .state import Run
from .surrogate import segment_errors, surrogate_mask

LONGEST = 2.0  # the surrogate's longest segment, in multiples of the uniform gap K / B
POWERS = (0.7, 1.5, 2.0, 3.0)  # the warped family: crowded at the end (< 1) or at the start (> 1); front: those > 1


def named(run: Run, name: str) -> list[Mask]:
    """The masks of one named start (the warped family has one per power in :data:`POWERS`, the front family
    one per power above 1)."""
    k, b, fixed = run.num_steps, run.budget, run.fixed
    if name == "surrogate":
        errors = segment_errors(run.evaluate, run.evaluate.rule, longest=math.ceil(LONGEST * k / b))
        masks = [surrogate_mask(errors, k, b, fixed)]
    elif name == "endpoints":
        masks = [with_fixed(k, b, fixed, endpoints_mask(k, b))]
    elif name == "front":
        masks = [with_fixed(k, b, fixed, warped_mask(k, b, p, last=False)) for p in POWERS if p > 1]
    elif name == "warped":
        masks = [with_fixed(k, b, fixed, warped_mask(k, b, p)) for p in POWERS]
    else:
        masks = [with_fixed(k, b, fixed)]
    return [run.check_start(m) for m in masks]


def pool(run: Run) -> list[Mask]:
    """Every named start's masks (the caller's ``start`` first), without repeats; with ``SearchConfig.choose``
    each under every rule chosen among."""
    masks = [run.check_start(run.start)] if run.start is not None else []
    for name in run.config.start:
        masks += named(run, name)
    return list(dict.fromkeys(each_rule(run, masks)))


def each_rule(run: Run, masks: list[Mask]) -> list[Mask]:
    """Every mask under each rule of ``SearchConfig.choose`` (the masks as they are where it is empty)."""
    if not run.config.choose:
        return masks
    return [encode(decode(m)[0], rule) for m in masks for rule in run.config.choose]


def random_start(run: Run) -> Mask:
    """A random mask, under the rule of the best plan so far where the search chooses the rule."""
    mask = random_mask(run.num_steps, run.budget, run.fixed, run.free, run.rng)
    return encode(mask, run_rule(run)) if run.config.choose else run.evaluate.schedule(mask)


def chosen(run: Run, mask: Mask) -> Mask:
    """``mask`` under the rule of the best plan so far, or (before any) under each rule chosen among, scored
    on every sample, the best of them; as it is where the search does not choose the rule."""
    if not run.config.choose:
        return mask
    if run.track.best is not None:
        return encode(decode(mask)[0], run_rule(run))
    each = each_rule(run, [mask])
    return min(zip(run.track.many(each), each))[1]


def run_rule(run: Run) -> str:
    """The rule of the best plan so far (the evaluator's before any)."""
    return rule_of(run.track.best or (), run.evaluate.rule)
