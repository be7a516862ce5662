"""Time shift: how one sigma schedule relates to another of the same scheduler at another resolution.

FlowMatch schedulers shift a base schedule ``s`` by ``m`` (static ``shift``, or ``exp(mu)`` from the token count
under dynamic shifting, as FLUX, SD3, Qwen-Image and Wan's flow schedulers do): ``sigma = m s / (1 + (m - 1) s)``.
That multiplies the odds ``sigma / (1 - sigma)`` by ``m``, so two schedules of one scheduler and step count at two
resolutions differ by one factor ``r`` on every step's odds, and a shift by ``r`` maps one onto the other.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .reschedule import with_sigmas
from .solver import Solver

if TYPE_CHECKING:
    import torch

TOLERANCE = 1e-4  # relative: factors of a schedule's steps that agree this well are one shift


def shift_sigmas(sigmas: Sequence[float] | torch.Tensor, factor: float) -> list[float]:
    """``sigmas`` with every odds ``sigma / (1 - sigma)`` multiplied by ``factor`` (1 and 0 stay)."""
    if factor == 1.0:
        return [float(s) for s in sigmas]
    return [float(factor * s / (1 + (factor - 1) * s)) for s in sigmas]


def relative_shift(sigmas: Sequence[float], reference: Sequence[float], tol: float = TOLERANCE) -> float | None:
    """The factor ``r`` with ``sigmas == shift_sigmas(reference, r)``, or None where there is none (another step
    count, another base schedule, a terminal stretch). Schedules equal within 1e-5 give exactly 1."""
    if len(sigmas) != len(reference):
        return None
    if all(abs(a - b) <= 1e-5 for a, b in zip(sigmas, reference)):
        return 1.0
    factors = []
    for a, b in zip(sigmas, reference):
        inner_a, inner_b = 1e-6 < a < 1 - 1e-6, 1e-6 < b < 1 - 1e-6
        if inner_a != inner_b:
            return None
        if not inner_a:
            if abs(a - b) > 1e-5:
                return None
            continue
        factors.append(a / (1 - a) * (1 - b) / b)
    if not factors:
        return 1.0
    r = math.exp(sum(math.log(f) for f in factors) / len(factors))
    if any(abs(f / r - 1) > tol for f in factors):
        return None
    return r


def shifted(solver: Solver, factor: float) -> Solver:
    """``solver`` over its sigmas shifted by ``factor`` (itself at 1)."""
    return solver if factor == 1.0 else with_sigmas(solver, shift_sigmas(solver.sigmas, factor))


def describe(low: float, high: float) -> str:
    """A shift range for messages: ``x0.75..x1.32``."""
    return f"x{low:.4g}" if math.isclose(low, high, rel_tol=TOLERANCE) else f"x{low:.4g}..x{high:.4g}"
