"""Stage 1, the search: which B of K steps compute, for the best final output at that budget.

``budcache.search(calib, budget)`` searches a plan for a calibrated pipeline (this module is
callable: it is :func:`~budcache.search.plan_search.search`); :func:`search_source` searches on
any model source, :func:`search_plan` on an :class:`Evaluator`.
"""

from .._stage import callable_module
from .anneal import EFFORTS, SearchConfig, SearchResult, anneal, check_budget, fixed_steps, neighbours
from .evaluator import METRICS, Evaluator
from .exhaustive import exhaustive
from .frontier import grow, search_frontier
from .plan_search import search, search_plan, search_source
from ..sampling.denoisers import Batch
from ..sampling.rules import decode, encode

__all__ = [
    "EFFORTS", "METRICS", "Batch", "Evaluator", "SearchConfig", "SearchResult", "anneal", "check_budget", "decode",
    "encode", "exhaustive", "fixed_steps", "grow", "neighbours", "search", "search_frontier", "search_plan",
    "search_source",
]

callable_module(__name__, search)
