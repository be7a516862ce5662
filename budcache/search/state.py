"""The state a search strategy works in: the run (the evaluator, the budget, the search settings, the fixed and free
steps, a seeded random source), the tracker of the best plan found so far, and the result a search returns."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from tqdm import tqdm

from ..errors import SearchError
from .checkpoint import Checkpoint
from .config import SearchConfig
from .evaluator import Evaluator
from .ledger import Spent
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
