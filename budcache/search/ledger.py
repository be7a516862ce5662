"""The forwards a search may spend, known before it starts: one ledger every strategy spends from.

The unit is the block-stack forward per calibration sample (on a GPU nothing else costs time): a
batched forward over n samples of a set of N costs n / N, the teacher's K full-compute steps
included. The evaluator charges every trajectory before it runs it, so a search never spends past
its cap: an evaluation that would cross it raises :class:`Spent` instead, and the search ends with
the best plan scored so far.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import SearchError


class Spent(Exception):
    """The next evaluation does not fit in what is left of the cap."""


REUSED_CALL = 1 / 32  # what the ledger charges for a reused step called outside a trajectory (the teacher
# surrogate's segments), in forwards: its embedding and head only (one H100: FLUX.1-dev 4 ms vs 186 ms computed,
# Wan2.1 3.4 ms vs 2 x 187 ms), rounded up


def default_cap(num_steps: int, budget: int) -> float:
    """The default cap in forwards per calibration sample: 7 K (the teacher's K and 6 K for the search;
    196 at K=28, 350 at K=50), whatever the budget."""
    return float(7 * num_steps)


@dataclass
class Ledger:
    """Forwards charged per calibration sample (``spent``) against a ``limit`` (``inf``: no cap).

    ``nominal``: charge what the search would have spent uninterrupted with every prefix state at hand
    (a resumed search: it recomputes prefix states the checkpoint does not hold, and charging those
    would end it elsewhere than the uninterrupted run)."""

    spent: float = 0.0
    limit: float = math.inf
    nominal: bool = False

    def open(self, cap: float, teacher: float) -> None:
        """Cap the search that starts now at ``cap`` forwards per sample, ``teacher`` of them already
        spent on the teacher (a second search on the same evaluator pays its teacher once)."""
        self.limit = max(cap, self.spent + cap - teacher)

    @property
    def left(self) -> float:
        return self.limit - self.spent

    def fits(self, cost: float) -> bool:
        return self.spent + cost <= self.limit + 1e-9

    def charge(self, cost: float) -> None:
        """Spend ``cost`` forwards per sample, or raise :class:`Spent` (spending nothing) if they do not fit."""
        if not self.fits(cost):
            raise Spent
        self.spent += cost


def check_cap(cap: float, num_steps: int, budget: int, references: float = 0) -> None:
    """Refuse a cap that cannot pay for the teacher, one candidate and the ``references`` scored after
    the search, before any forward."""
    least = num_steps + budget + references
    if not cap >= least:
        kept = f", the reference losses ({references:g})" if references else ""
        raise SearchError(
            f"a cap of {cap:g} forwards per calibration sample cannot pay for the teacher ({num_steps}){kept} "
            f"and one candidate ({budget}); give max_forwards (--max-forwards) {least:g} or more"
        )
