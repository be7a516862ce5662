"""Search settings: :class:`SearchConfig`, the named :data:`EFFORTS`, and their checks."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ..errors import SearchError
from ..sampling.rules import RULES
from .ledger import default_cap

CHOICE = (
    "extrapolate",
    "extrapolate2",
    "repeat",
)  # the rules a default search chooses among, in the order their uniform
# masks are scored: the first is scored on every sample before the others are ranked (on the demo it leads under every
# scheduler), so the plan the search holds from the start is likely under the rule it keeps


@dataclass
class SearchConfig:
    """Search strategy, effort and options (the defaults are the ``default`` effort). Step 0, the first
    ``forced_prefix`` steps and the ``forced`` steps (e.g. the first step of a second expert) always compute."""

    strategy: str = "budgeted"  # "budgeted" (see .budgeted) or "classic" (see .classic): the composition that runs
    max_forwards: float | None = None  # the cap in forwards per calibration sample, teacher included (None: the
    # budgeted strategy's default_cap(K, B); the classic one is then uncapped; math.inf: no cap)
    iterations: int = 200  # annealing proposals per start (classic) or per round (budgeted)
    starts: int = 2  # classic: starts (the named ones, then random); budgeted: the best-ranked starts climbed
    t_start: float = 0.05
    t_end: float = 1e-3
    shift_prob: float = 0.5
    hill_climb: bool = True
    kicks: int = 2
    forced_prefix: int = 0
    forced: tuple[int, ...] = ()
    seed: int = 0
    rules: tuple[str, ...] = ()
    choose: tuple[str, ...] = ()  # reuse rules the search chooses among (a default search: CHOICE): the uniform mask is
    # ranked under each, the search goes on under the best one, and its climbed plans are tried under the others (empty:
    # the evaluator's rule; see budcache.sampling.rules.RULES)
    flip_prob: float = 0.25
    checkpoint_every: int = 25  # evaluations between checkpoint writes (when the search has a checkpoint)
    batch_candidates: int = 1  # hill-climbing neighbours evaluated together in one batched forward
    start: tuple[str, ...] = ("uniform", "endpoints", "warped")  # the named starts: "uniform" mask, "endpoints" (B
    # steps spread over 0..K-1, the last included), "surrogate" (the teacher surrogate's optimum, see .surrogate),
    # "warped" (a family of masks crowded at the start or the end, the last step included, see moves.warped_mask;
    # classic takes its power-2 mask), "front" (masks crowded at the start whose last steps reuse: where the flow runs
    # straight once each sample has chosen its mode, as on the Gaussian mixture; the budgeted strategy adds them
    # where the calibration samples are not alike)
    reach: int | None = None  # hill climbing moves a computed step at most this far (0: the whole swap
    # neighbourhood; None: 1 for the budgeted strategy, about 4% of the steps, at least 1 for the classic: auto_reach)
    screen: float = 0.25  # share of the calibration batches that ranks hill-climbing neighbours (budgeted: the rung
    # that ranks, climbs and anneals where the calibration samples are alike; 1: no screening)
    confirm: int = 3  # the best screened neighbours scored on the whole calibration set
    sweep: bool = True  # hill climbing first sweeps the computed steps (see climb.sweep), then descends steepest
    escalate: int = 300  # classic without annealing: proposals per start annealed after the local search when its
    # starts end more than RUGGED apart (a rugged objective); 0: only warn


STARTS = ("uniform", "endpoints", "surrogate", "warped", "front")
STRATEGIES = ("budgeted", "classic")
RUGGED = 2.0  # the classic local search anneals (or warns) when its starts' local optima are further apart than this
# factor: above the trained demo's largest spread (1.58x, K=28 B=10 extrapolate), below the Gaussian mixture's (2.1-57x)

_LOCAL = SearchConfig(strategy="classic", iterations=0, start=("uniform", "endpoints"))
_ANNEALED = SearchConfig(
    strategy="classic", iterations=300, starts=2, kicks=4, start=("uniform",), reach=0, sweep=False
)

EFFORTS: dict[str, SearchConfig] = {
    # budget-first: multi-fidelity local search and annealing within default_cap(K, B) forwards per sample
    "default": SearchConfig(),
    # the local search budcache ran by default before it had a cap: screened sweeps + steepest descent from the
    # uniform and the endpoints masks, 2 kicks, annealing as well when the starts end > RUGGED apart; uncapped
    "local": _LOCAL,
    # annealing (2 starts x 300 proposals) + screened steepest descent over every swap + 4 kicks; uncapped
    "annealed": _ANNEALED,
    # the same unscreened, uncapped: budcache's default before screening
    "thorough": dataclasses.replace(_ANNEALED, screen=1.0),
    # the long reference search (4 starts x 1000 proposals, 8 kicks, unscreened): the best-known objective
    "long": dataclasses.replace(_ANNEALED, iterations=1000, starts=4, kicks=8, screen=1.0),
}

_EFFORT_FIELDS = (
    "strategy",
    "max_forwards",
    "iterations",
    "starts",
    "t_start",
    "t_end",
    "shift_prob",
    "hill_climb",
    "kicks",
    "flip_prob",
    "start",
    "reach",
    "screen",
    "confirm",
    "sweep",
    "escalate",
)


def effort_name(config: SearchConfig) -> str:
    """The name of the effort ``config`` runs (its problem settings aside), or ``custom``."""
    same = lambda c: all(getattr(c, f) == getattr(config, f) for f in _EFFORT_FIELDS)  # noqa: E731
    return next((name for name, c in EFFORTS.items() if same(c)), "custom")


def cap_of(config: SearchConfig, num_steps: int, budget: int) -> float:
    """The search's cap in forwards per calibration sample (``math.inf``: none)."""
    if config.max_forwards is not None:
        return float(config.max_forwards)
    return default_cap(num_steps, budget) if config.strategy == "budgeted" else math.inf


def fixed_steps(num_steps: int, config: SearchConfig) -> list[int]:
    """The steps every candidate computes: 0, the forced prefix and the forced steps."""
    bad = [f for f in config.forced if not 0 <= f < num_steps]
    if bad:
        raise SearchError(f"forced steps {bad} are outside 0..{num_steps - 1}")
    return sorted({0, *range(config.forced_prefix), *config.forced})


_LEAST = {
    "iterations": 0,
    "starts": 1,
    "kicks": 0,
    "forced_prefix": 0,
    "checkpoint_every": 1,
    "batch_candidates": 1,
    "reach": 0,
    "confirm": 1,
    "escalate": 0,
}


def auto_reach(num_steps: int) -> int:
    """The default reach: about 4% of the steps, at least 1 (1 at K=28, 2 at K=50). Measured on the demo model:
    reach 1 beats reach 2 at K=28 (equal or better plans, fewer forwards), reach 2 beats reach 1 at K=50."""
    return max(1, round(num_steps / 25))


def check_config(config: SearchConfig) -> None:
    """Refuse search settings out of range (e.g. no start: nothing would be evaluated), before any forward."""
    if config.strategy not in STRATEGIES:
        raise SearchError(
            f"SearchConfig.strategy: unknown strategy {config.strategy!r}; choose from {', '.join(STRATEGIES)}"
        )
    for name, least in _LEAST.items():
        value = getattr(config, name)
        if name == "reach" and value is None:
            continue
        if not isinstance(value, int) or value < least:
            raise SearchError(f"SearchConfig.{name} must be an integer of at least {least}, got {value!r}")
    if config.max_forwards is not None and not config.max_forwards > 0:
        raise SearchError(
            f"SearchConfig.max_forwards must be positive (forwards per calibration sample), got {config.max_forwards!r}"
        )
    if not 0 < config.screen <= 1:
        raise SearchError(f"SearchConfig.screen must be a share of the calibration set in (0, 1], got {config.screen}")
    if config.choose and config.rules:
        raise SearchError(
            "SearchConfig.choose and SearchConfig.rules exclude each other: choose one rule for the "
            "plan, or search a rule per step"
        )
    bad = [r for r in config.choose if r not in RULES]
    if bad:
        raise SearchError(f"SearchConfig.choose: unknown reuse rule {bad[0]!r}; choose from {', '.join(RULES)}")
    unknown = [name for name in config.start if name not in STARTS]
    if unknown:
        raise SearchError(f"SearchConfig.start: unknown start {unknown[0]!r}; choose from {', '.join(STARTS)}")


def check_budget(num_steps: int, budget: int, config: SearchConfig = SearchConfig()) -> None:
    if not 1 <= budget <= num_steps:
        raise SearchError(f"budget must be between 1 and the number of steps ({num_steps}), got {budget}")
    fixed = fixed_steps(num_steps, config)
    if len(fixed) > budget:
        raise SearchError(
            f"{len(fixed)} steps must compute ({fixed}: step 0, the forced prefix and forced steps), "
            f"more than the budget ({budget}); raise the budget"
        )
