"""Running a search: the context every strategy works in, and the driver that runs one.

A *strategy* is a function ``strategy(run)`` that spends forwards through ``run.track`` (the whole
calibration set, where the best plan is kept) and ``run.rung(share)`` (a share of it, for cheap
ranking) until it is done or the ledger raises :class:`~.ledger.Spent`. Its building blocks are
functions from a mask to a better one (``climb.climb``, ``anneal.anneal``, ``kicks.kicks``). One file
per strategy; ``SearchConfig.strategy`` names one (see :data:`~.config.STRATEGIES`).
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tqdm import tqdm

from ..errors import SearchError
from ..sampling.rules import decode, history_depth, rule_code, rule_of
from .checkpoint import Checkpoint
from .config import SearchConfig, auto_reach, cap_of, check_budget, check_config, fixed_steps
from .evaluator import Evaluator
from .ledger import Spent, check_cap
from .moves import Mask


@dataclass
class SearchResult:
    mask: list[int]
    loss: float
    rules: list[str] | None = None
    rule: str | None = None  # the rule chosen among SearchConfig.choose (None: the evaluator's, or per-step rules)
    history: list[tuple[int, float, float]] = field(default_factory=list)  # (evaluation, current, best)
    seconds: float = 0.0
    interrupted: bool = False
    cap: float = math.inf  # forwards per calibration sample the search could spend (teacher included)
    spent: float = 0.0  # what it charged to its ledger
    curve: list[tuple[float, float]] = field(default_factory=list)  # (forwards per sample spent, best loss so far)


class Tracker:
    """Scores masks on the whole calibration set and keeps the best one, the history and the anytime
    curve; saves the checkpoint as evaluations come."""

    def __init__(self, evaluate: Evaluator, bar: tqdm, checkpoint: Checkpoint | None = None):
        self.evaluate, self.bar, self.checkpoint = evaluate, bar, checkpoint
        self.best: Mask | None = None
        self.best_loss = math.inf
        self.history: list[tuple[int, float, float]] = []
        self.curve: list[tuple[float, float]] = []
        self.seen: set[Mask] = set()

    def many(self, masks: list[Mask], group: int = 1) -> list[float]:
        """Losses of several masks, the new ones evaluated ``group`` at a time in batched forwards; where the
        cap is reached part way, the masks scored before it still count (the best plan among them)."""
        try:
            self.evaluate.many(masks, group)
        except Spent:
            for m in masks:
                if self.evaluate.cost(m) == 0:  # scored (memoized, not a checkpoint's replay): free to track
                    self(m)
            raise
        return [self(m) for m in masks]

    def __call__(self, mask: Mask) -> float:
        loss = self.evaluate(mask)
        if loss < self.best_loss:
            self.best, self.best_loss = mask, loss
        key = self.evaluate.schedule(mask)
        if key not in self.seen:  # repeated masks add nothing to the history (also when replayed from a checkpoint)
            self.seen.add(key)
            self.history.append((len(self.seen), loss, self.best_loss))
            self.curve.append((self.evaluate.ledger.spent, self.best_loss))
        if self.checkpoint is not None:
            self.checkpoint.maybe_save(self.evaluate)
        self.bar.set_postfix(best=f"{self.best_loss:.4g}", evals=len(self.seen), refresh=False)
        self.bar.update(
            round(min(self.evaluate.ledger.spent, self.evaluate.ledger.limit), 1) - self.bar.n
        )  # rate-limited
        return loss


@dataclass
class Run:
    """What a strategy works with: the problem, the settings, the random source and the tracker."""

    evaluate: Evaluator
    budget: int
    config: SearchConfig
    track: Tracker
    fixed: list[int]
    free: tuple[int, ...]
    flips: tuple[int, ...]
    rng: random.Random
    start: Sequence[int] | None = None  # a first start given by the caller (e.g. a neighbouring budget's plan)

    @property
    def num_steps(self) -> int:
        return self.evaluate.num_steps

    def rung(self, share: float) -> Evaluator | None:
        """An evaluator on ``share`` of the calibration batches (None: that is every batch; see
        :meth:`Evaluator.subset`)."""
        return self.evaluate.subset(share)

    def phase(self, text: str) -> None:
        if not self.track.bar.disable:
            self.track.bar.set_description_str(f"search B={self.budget}/{self.num_steps} ({text})", refresh=False)

    def check_start(self, mask: Sequence[int]) -> Mask:
        k, b = self.num_steps, self.budget
        if len(mask) != k or sum(1 for m in mask if m == 1) != b or any(mask[f] != 1 for f in self.fixed):
            raise SearchError(f"the start mask must have {k} steps, {b} computed, steps {self.fixed} among them")
        return self.evaluate.schedule(mask)


Strategy = Callable[[Run], None]


def _strategies() -> dict[str, Strategy]:
    from .budgeted import budgeted
    from .classic import classic

    return {"budgeted": budgeted, "classic": classic}


def run_search(
    evaluate: Evaluator,
    budget: int,
    config: SearchConfig = SearchConfig(),
    progress: bool = True,
    checkpoint: Checkpoint | None = None,
    start: Sequence[int] | None = None,
) -> SearchResult:
    """Run ``config.strategy`` within its cap (see :func:`~.config.cap_of`); ``start``: a first start
    mask; with a ``checkpoint`` the evaluations are saved as they come (see :mod:`.checkpoint`)."""
    k = evaluate.num_steps
    check_config(config)
    check_budget(k, budget, config)
    if config.choose and history_depth(config.choose) > evaluate.depth:
        raise SearchError(
            f"the evaluator keeps too few cache entries to choose among {', '.join(config.choose)}; "
            "build it with rules_in_play=SearchConfig.choose"
        )
    cap = cap_of(config, k, budget)
    check_cap(cap, k, budget)
    if config.reach is None:  # within a cap, single-step moves buy more (measured on the demo at K=50)
        config = dataclasses.replace(config, reach=1 if config.strategy == "budgeted" else auto_reach(k))
    evaluate.ledger.open(cap, teacher=k)
    fixed = fixed_steps(k, config)
    free = tuple(i for i in range(k) if i not in fixed)
    flips = tuple(rule_code(r) for r in dict.fromkeys((evaluate.rule, *config.rules))) if config.rules else ()
    start_time = time.perf_counter()
    total = round(evaluate.ledger.limit, 1) if math.isfinite(cap) else None
    interrupted = False
    with tqdm(
        total=total,
        desc=f"search B={budget}/{k}",
        disable=not progress,
        leave=False,
        unit="fwd/sample",
        bar_format=None if total else "{desc}: {postfix}",
    ) as bar:
        track = Tracker(evaluate, bar, checkpoint)
        run = Run(evaluate, budget, config, track, fixed, free, flips, random.Random(config.seed), start)
        try:
            _strategies()[config.strategy](run)
        except KeyboardInterrupt:
            interrupted = True
        except Spent:
            pass
        finally:
            if checkpoint is not None:
                checkpoint.save(evaluate)
    if track.best is None:
        if interrupted:
            raise KeyboardInterrupt("search interrupted before any mask was evaluated")
        raise SearchError(
            f"the cap of {cap:g} forwards per sample was spent before any mask was scored; raise --max-forwards"
        )
    mask, rules = decode(track.best, evaluate.rule)
    rule = rule_of(track.best, evaluate.rule) if config.choose else None
    return SearchResult(
        mask=mask,
        loss=track.best_loss,
        rules=rules if flips else None,
        rule=rule,
        history=track.history,
        seconds=time.perf_counter() - start_time,
        interrupted=interrupted,
        cap=cap,
        spent=evaluate.ledger.spent,
        curve=track.curve,
    )
