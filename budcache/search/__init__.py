"""Stage 1, the search: which B of K steps compute, for the best final output at that budget.

``budcache.search(calib, budget)`` searches a plan for a calibrated pipeline (this module is
callable: it is :func:`~budcache.search.plan_search.search`); :func:`search_source` searches on
any model source, :func:`search_plan` on an :class:`Evaluator`, :func:`run_search` runs a strategy
within its cap (:func:`default_cap`) and returns the bare result.
"""

from .._stage import callable_module
from ..sampling.denoisers import Batch
from ..sampling.rules import decode, encode
from .config import EFFORTS, SearchConfig, cap_of, check_budget, fixed_steps
from .evaluator import METRICS, Evaluator
from .exhaustive import exhaustive
from .frontier import grow, search_frontier
from .ledger import Ledger, Spent, default_cap
from .moves import neighbours
from .plan_search import search, search_plan, search_source
from .run import run_search
from .state import SearchResult

__all__ = [
    "EFFORTS",
    "METRICS",
    "Batch",
    "Evaluator",
    "Ledger",
    "SearchConfig",
    "SearchResult",
    "Spent",
    "cap_of",
    "check_budget",
    "decode",
    "default_cap",
    "encode",
    "exhaustive",
    "fixed_steps",
    "grow",
    "neighbours",
    "run_search",
    "search",
    "search_frontier",
    "search_plan",
    "search_source",
]

callable_module(__name__, search)
