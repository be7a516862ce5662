"""Stage-1 search: hill climbing on the budget manifold from a few structured starts, screened on a
share of the calibration set, optionally after simulated annealing.

Moves keep ``sum(mask) == B``: *swap* exchanges a computed step with a reused one, *shift*
moves a computed step to a free neighbour. Hill climbing sweeps the computed steps, the last
first, taking each one's best move within ``reach`` steps as soon as it lowers the loss, then
descends steepest over the same neighbourhood (0: every swap) to a local optimum; with
``screen`` < 1 moves are first scored on that share of the calibration batches and only the
best (``confirm`` of them in steepest descent) are scored on all of them, so a move is taken
only when the whole calibration set confirms it. The default starts are the uniform mask and
the *endpoints* mask (the last step computed, which extrapolating rules favour). Annealing, when
``iterations`` > 0, proposes random moves under a Metropolis rule with a geometric temperature
relative to the current loss (a move that worsens the loss by a fraction ``d`` is accepted with
probability ``exp(-d / T)``), and a few *kicks* (three random moves from the best mask, then hill
climbing again) escape local optima. The named :data:`EFFORTS` trade forwards for plan quality.

With ``SearchConfig.rules`` the reuse rule of each reused step is searched jointly with the
mask: candidates are schedules (per step: compute, or reuse with a rule), and a *flip* move
changes one reused step's rule.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

from tqdm import tqdm

from ..errors import SearchError
from ..plan import uniform_mask
from .checkpoint import Checkpoint
from ..sampling.rules import Schedule, decode, rule_code
from .evaluator import Evaluator
from .surrogate import segment_errors, surrogate_mask

Mask = Schedule


@dataclass
class SearchConfig:
    """Search effort and options (the defaults are the ``default`` effort). Step 0, the first
    ``forced_prefix`` steps and the ``forced`` steps (e.g. the first step of a second expert)
    always compute."""

    iterations: int = 0  # annealing proposals per start
    starts: int = 2
    t_start: float = 0.05
    t_end: float = 1e-3
    shift_prob: float = 0.5
    hill_climb: bool = True
    kicks: int = 2
    forced_prefix: int = 0
    forced: tuple[int, ...] = ()
    seed: int = 0
    rules: tuple[str, ...] = ()
    flip_prob: float = 0.25
    checkpoint_every: int = 25  # evaluations between checkpoint writes (when the search has a checkpoint)
    batch_candidates: int = 1  # hill-climbing neighbours evaluated together in one batched forward
    start: tuple[str, ...] = ("uniform", "endpoints")  # the first starts (then random ones): "uniform" mask, "endpoints"
    # (B steps spread over 0..K-1, the last included), "surrogate": the teacher surrogate's optimum (see .surrogate)
    reach: int | None = None  # hill climbing moves a computed step at most this far (0: the whole swap
    # neighbourhood; None: about 4% of the steps, at least 1: see auto_reach)
    screen: float = 0.25  # share of the calibration batches that ranks hill-climbing neighbours (1: no screening)
    confirm: int = 3  # the best screened neighbours scored on the whole calibration set
    sweep: bool = True  # hill climbing first sweeps the computed steps (see _sweep), then descends steepest
    escalate: int = 300  # without annealing: proposals per start annealed after the local search when its starts
    # end more than RUGGED apart (a rugged objective); 0: only warn
    max_forwards: float | None = None  # stop once this many forwards per calibration sample are spent (teacher
    # included) and return the best plan so far (None: search to the end)


STARTS = ("uniform", "endpoints", "surrogate")
RUGGED = 2.0  # the local search anneals (or warns) when its starts' local optima are further apart than this factor:
# above the trained demo's largest spread (1.58x, K=28 B=10 extrapolate), below the Gaussian mixture's (2.1-57x)

_ANNEALED = SearchConfig(iterations=300, starts=2, kicks=4, start=("uniform",), reach=0, sweep=False)

EFFORTS: dict[str, SearchConfig] = {
    # local search: screened sweeps + steepest descent by moves of a few steps (auto_reach) from the uniform and the
    # endpoints masks, the better end kept; for smooth objectives (trained models), not for rugged ones
    "fast": SearchConfig(kicks=0, escalate=0),
    # the same + 2 kicks (perturb the best mask by 3 random moves, climb again); when the two starts end more than
    # RUGGED apart (a rugged objective), annealing from the best and from a random mask first (2 x 300 proposals)
    "default": SearchConfig(),
    # annealing (2 starts x 300 proposals) + screened steepest descent over every swap + 4 kicks: for rugged
    # objectives (e.g. the Gaussian mixture), 3-10x the default's forwards
    "annealed": _ANNEALED,
    # the same unscreened (budcache's default before this issue): 2-3x annealed's forwards
    "thorough": dataclasses.replace(_ANNEALED, screen=1.0),
    # the long reference search (4 starts x 1000 proposals, 8 kicks, unscreened): the best-known objective
    "long": dataclasses.replace(_ANNEALED, iterations=1000, starts=4, kicks=8, screen=1.0),
}


_EFFORT_FIELDS = ("iterations", "starts", "t_start", "t_end", "shift_prob", "hill_climb", "kicks", "flip_prob", "start",
                  "reach", "screen", "confirm", "sweep", "escalate",
                  "max_forwards")


def effort_name(config: SearchConfig) -> str:
    """The name of the effort ``config`` runs (its problem settings aside), or ``custom``."""
    same = lambda c: all(getattr(c, f) == getattr(config, f) for f in _EFFORT_FIELDS)  # noqa: E731
    return next((name for name, c in EFFORTS.items() if same(c)), "custom")


@dataclass
class SearchResult:
    mask: list[int]
    loss: float
    rules: list[str] | None = None
    history: list[tuple[int, float, float]] = field(default_factory=list)  # (evaluation, current, best)
    seconds: float = 0.0
    interrupted: bool = False


def fixed_steps(num_steps: int, config: SearchConfig) -> list[int]:
    """The steps every candidate computes: 0, the forced prefix and the forced steps."""
    bad = [f for f in config.forced if not 0 <= f < num_steps]
    if bad:
        raise SearchError(f"forced steps {bad} are outside 0..{num_steps - 1}")
    return sorted({0, *range(config.forced_prefix), *config.forced})


_LEAST = {"iterations": 0, "starts": 1, "kicks": 0, "forced_prefix": 0, "checkpoint_every": 1, "batch_candidates": 1,
          "reach": 0, "confirm": 1, "escalate": 0}


def auto_reach(num_steps: int) -> int:
    """The default reach: about 4% of the steps, at least 1 (1 at K=28, 2 at K=50). Measured on the demo model:
    reach 1 beats reach 2 at K=28 (equal or better plans, fewer forwards), reach 2 beats reach 1 at K=50."""
    return max(1, round(num_steps / 25))


def check_config(config: SearchConfig) -> None:
    """Refuse search settings out of range (e.g. no start: nothing would be evaluated), before any forward."""
    for name, least in _LEAST.items():
        value = getattr(config, name)
        if name == "reach" and value is None:
            continue
        if not isinstance(value, int) or value < least:
            raise SearchError(f"SearchConfig.{name} must be an integer of at least {least}, got {value!r}")
    if config.max_forwards is not None and not config.max_forwards > 0:
        raise SearchError(f"SearchConfig.max_forwards must be positive (forwards per calibration sample), got "
                          f"{config.max_forwards!r}")
    if not 0 < config.screen <= 1:
        raise SearchError(f"SearchConfig.screen must be a share of the calibration set in (0, 1], got {config.screen}")
    unknown = [name for name in config.start if name not in STARTS]
    if unknown:
        raise SearchError(f"SearchConfig.start: unknown start {unknown[0]!r}; choose from {', '.join(STARTS)}")


def check_budget(num_steps: int, budget: int, config: SearchConfig = SearchConfig()) -> None:
    if not 1 <= budget <= num_steps:
        raise SearchError(f"budget must be between 1 and the number of steps ({num_steps}), got {budget}")
    fixed = fixed_steps(num_steps, config)
    if len(fixed) > budget:
        raise SearchError(f"{len(fixed)} steps must compute ({fixed}: step 0, the forced prefix and forced steps), "
                        f"more than the budget ({budget}); raise the budget")


def _swap(mask: Mask, i: int, j: int) -> Mask:
    """Computed step i becomes a reuse (taking j's rule), reused step j computes."""
    m = list(mask)
    m[i], m[j] = m[j], 1
    return tuple(m)


def _split(mask: Mask, free: tuple[int, ...]) -> tuple[list[int], list[int]]:
    return [i for i in free if mask[i] == 1], [j for j in free if mask[j] != 1]


def _moves(mask: Mask, i: int, off: list[int], reach: int) -> list[Mask]:
    """The swaps of computed step i with the reused steps ``off`` at most ``reach`` steps away (0: any)."""
    return [_swap(mask, i, j) for j in off if not reach or abs(i - j) <= reach]


def neighbours(mask: Mask, free: tuple[int, ...], flips: tuple[int, ...] = (), reach: int = 0) -> list[Mask]:
    """Every swap of a computed step with a reused step (both among the ``free`` steps; at most
    ``reach`` steps apart when ``reach`` > 0, so the neighbourhood grows as B, not K * B), and every
    rule flip of a reused step to one of the schedule codes ``flips``."""
    on, off = _split(mask, free)
    out = [m for i in on for m in _moves(mask, i, off, reach)]
    for j in off:
        out += [mask[:j] + (c,) + mask[j + 1:] for c in flips if c != mask[j]]
    return out


def _propose(mask: Mask, free: tuple[int, ...], rng: random.Random, config: SearchConfig, flips: tuple[int, ...]) -> Mask | None:
    on, off = _split(mask, free)
    if not off:
        return None
    if flips and (not on or rng.random() < config.flip_prob):
        j = rng.choice(off)
        return mask[:j] + (rng.choice([c for c in flips if c != mask[j]] or [mask[j]]),) + mask[j + 1:]
    if not on:
        return None
    i = rng.choice(on)
    if rng.random() < config.shift_prob:
        targets = [j for j in (i - 1, i + 1) if j in off]
        j = rng.choice(targets) if targets else rng.choice(off)
    else:
        j = rng.choice(off)
    return _swap(mask, i, j)


def _random_mask(k: int, b: int, fixed: list[int], free: tuple[int, ...], rng: random.Random) -> Mask:
    picks = set(fixed) | set(rng.sample(free, b - len(fixed)))
    return tuple(1 if i in picks else 0 for i in range(k))


def _endpoints_mask(k: int, b: int) -> list[int]:
    """B computed steps spread evenly over 0..K-1, the first and the last included."""
    picks = {round(i * (k - 1) / (b - 1)) for i in range(b)} if b > 1 else {0}
    return [1 if i in picks else 0 for i in range(k)]


def _uniform_start(k: int, b: int, fixed: list[int], mask: Sequence[int] | None = None) -> list[int]:
    """The uniform mask (or ``mask``) with the fixed steps switched on, each taking the nearest free computed step."""
    mask = list(uniform_mask(k, b) if mask is None else mask)
    for f in fixed:
        if not mask[f]:
            j = min((j for j in range(k) if mask[j] and j not in fixed), key=lambda j: abs(j - f))
            mask[f], mask[j] = 1, 0
    return mask


class _Spent(Exception):
    """The search spent its ``max_forwards``."""


class _Tracker:
    """Best mask so far and the loss history, shared by every phase."""

    def __init__(self, evaluate: Evaluator, bar: tqdm, desc: str, checkpoint: Checkpoint | None = None,
                 count: bool = False, max_forwards: float | None = None):
        """``count``: the progress bar counts the masks evaluated (a search without annealing proposals);
        ``max_forwards``: raise :class:`_Spent` once the forwards per calibration sample reach it."""
        self.evaluate, self.bar, self.desc, self.checkpoint, self.count = evaluate, bar, desc, checkpoint, count
        self.max_forwards = max_forwards
        self.best: Mask | None = None
        self.best_loss = math.inf
        self.history: list[tuple[int, float, float]] = []
        self.seen: set[Mask] = set()

    def many(self, masks: list[Mask], group: int) -> list[float]:
        """Losses of several masks, the new ones evaluated ``group`` at a time in batched forwards."""
        self.evaluate.many(masks, group)
        return [self(m) for m in masks]

    def __call__(self, mask: Mask) -> float:
        loss = self.evaluate(mask)
        if loss < self.best_loss:
            self.best, self.best_loss = mask, loss
        key = self.evaluate.schedule(mask)
        if key not in self.seen:  # repeated masks add nothing to the history (also when replayed from a checkpoint)
            self.seen.add(key)
            if self.count:
                self.bar.update()
            self.history.append((len(self.seen), loss, self.best_loss))
        if self.checkpoint is not None:
            self.checkpoint.maybe_save(self.evaluate)
        self.bar.set_postfix(best=f"{self.best_loss:.4g}", evals=len(self.seen), refresh=False)
        root = self.evaluate.root
        if self.max_forwards is not None and root.forwards >= self.max_forwards * root.samples:
            raise _Spent
        return loss


def anneal(evaluate: Evaluator, budget: int, config: SearchConfig = SearchConfig(), progress: bool = True,
           checkpoint: Checkpoint | None = None, start: Sequence[int] | None = None) -> SearchResult:
    """SA + HC from ``config.starts`` starts (the named ``config.start`` ones, ``start`` replacing the
    first, then random ones); with a ``checkpoint`` the evaluations are saved as they come (see :mod:`.checkpoint`)."""
    k = evaluate.num_steps
    check_config(config)
    check_budget(k, budget, config)
    if config.reach is None:
        config = dataclasses.replace(config, reach=auto_reach(k))
    fixed = fixed_steps(k, config)
    free = tuple(i for i in range(k) if i not in fixed)
    flips = tuple(rule_code(r) for r in dict.fromkeys((evaluate.rule, *config.rules))) if config.rules else ()
    screen = evaluate.subset(config.screen)
    climb = lambda m, loss: _hill_climb(track, m, loss, free, flips, config, screen)  # noqa: E731
    rng = random.Random(config.seed)
    start_time = time.perf_counter()
    total = config.starts * config.iterations or None  # without annealing: masks evaluated, no total
    desc = f"search B={budget}/{k}"
    ends: list[float] = []  # each start's local optimum
    with tqdm(total=total, desc=desc, disable=not progress, leave=False, unit="mask" if total is None else "it") as bar:
        track = _Tracker(evaluate, bar, desc, checkpoint, count=total is None, max_forwards=config.max_forwards)
        interrupted = spent = rugged = False

        def anneal_from(current: Mask, iterations: int) -> tuple[Mask, float]:
            """Metropolis proposals from ``current`` under the geometric temperature; the last accepted mask."""
            loss = track(current)
            for it in range(iterations):
                temp = config.t_start * (config.t_end / config.t_start) ** (it / max(1, iterations - 1))
                cand = _propose(current, free, rng, config, flips)
                if total is not None:
                    bar.update()
                if cand is None:
                    continue
                c_loss = track(cand)
                if c_loss <= loss or (
                    math.isfinite(c_loss) and rng.random() < math.exp(-(c_loss - loss) / (temp * max(loss, 1e-30)))
                ):
                    current, loss = cand, c_loss
            return current, loss

        try:
            for s in range(config.starts):
                if progress:
                    phase = "annealing, start" if config.iterations else "start"
                    bar.set_description_str(f"{desc} ({phase} {s + 1}/{config.starts})", refresh=False)
                if s < len(config.start):
                    if s == 0 and start is not None:
                        first = list(start)
                    elif config.start[s] == "surrogate":
                        first = surrogate_mask(segment_errors(evaluate, evaluate.rule), k, budget, fixed)
                    elif config.start[s] == "endpoints":
                        first = _uniform_start(k, budget, fixed, _endpoints_mask(k, budget))
                    else:
                        first = _uniform_start(k, budget, fixed)
                    if len(first) != k or sum(first) != budget or any(not first[f] for f in fixed):
                        raise SearchError(f"the start mask must have {k} steps, {budget} computed, steps {fixed} among them")
                    current: Mask = evaluate.schedule(first)
                else:
                    current = evaluate.schedule(_random_mask(k, budget, fixed, free, rng))
                current, loss = anneal_from(current, config.iterations)
                if config.hill_climb:
                    current, loss = climb(current, loss)
                ends.append(loss)
            rugged = len(ends) > 1 and 0 < min(ends) and max(ends) > RUGGED * min(ends)
            if rugged and not config.iterations and config.escalate:  # the starts disagree: anneal as well
                for s in range(config.starts):
                    if progress:
                        bar.set_description_str(f"{desc} (rugged: annealing {s + 1}/{config.starts})", refresh=False)
                    first = track.best if s == 0 else evaluate.schedule(_random_mask(k, budget, fixed, free, rng))
                    current, loss = anneal_from(first, config.escalate)
                    if config.hill_climb:
                        climb(current, loss)
            if config.hill_climb and track.best is not None:
                climb(track.best, track.best_loss)
                for _ in range(config.kicks):  # iterated local search: perturb the best, climb again
                    kicked = track.best
                    for _ in range(3):
                        kicked = _propose(kicked, free, rng, config, flips) or kicked
                    climb(kicked, track(kicked))
        except KeyboardInterrupt:
            interrupted = True
        except _Spent:
            spent = True
        finally:
            if checkpoint is not None:
                checkpoint.save(evaluate)
    if track.best is None:
        raise KeyboardInterrupt("search interrupted before any mask was evaluated")
    if rugged and not (interrupted or spent or config.iterations or config.escalate):
        warnings.warn(f"budcache: the local search's {len(ends)} starts ended {max(ends) / min(ends):.3g}x apart: this "
                      "objective is rugged and a local search may miss its best plan; compare with --effort default "
                      "(which anneals then) or annealed", UserWarning, stacklevel=2)
    mask, rules = decode(track.best, evaluate.rule)
    return SearchResult(
        mask=mask,
        loss=track.best_loss,
        rules=rules if flips else None,
        history=track.history,
        seconds=time.perf_counter() - start_time,
        interrupted=interrupted,
    )


def _sweep(track: _Tracker, mask: Mask, loss: float, free: tuple[int, ...], config: SearchConfig,
           screen: Evaluator | None) -> tuple[Mask, float]:
    """First-improvement sweeps over the computed steps, the last first (their moves are the cheapest:
    the prefix before them is stored): each step's best move within ``config.reach`` (by the ``screen``
    evaluator, where it beats the current mask there) is scored in full and taken at once if it lowers
    the loss. Repeated until a sweep moves nothing; a sweep can move every step, a steepest-descent
    round one (far fewer rounds where the start is far from the optimum, e.g. at K=50)."""
    moved = True
    while moved:
        moved = False
        for i in reversed(_split(mask, free)[0]):
            if mask[i] != 1:
                continue
            moves = _moves(mask, i, _split(mask, free)[1], config.reach)
            if not moves:
                continue
            scores = screen.many(moves, config.batch_candidates) if screen else track.many(moves, config.batch_candidates)
            rough, move = min(zip(scores, moves))
            if screen is not None and rough >= screen(mask):
                continue
            move_loss = track(move)
            if move_loss < loss:
                mask, loss, moved = move, move_loss, True
    return mask, loss


def _hill_climb(track: _Tracker, mask: Mask, loss: float, free: tuple[int, ...], flips: tuple[int, ...],
                config: SearchConfig, screen: Evaluator | None = None) -> tuple[Mask, float]:
    """Steepest descent over the swap/shift (and rule-flip) neighbourhood within ``config.reach``, to a
    local optimum (after sweeps, with ``config.sweep``); ``config.batch_candidates`` neighbours at a time
    share one batched forward. With a ``screen`` evaluator only the ``config.confirm`` neighbours it
    ranks best are scored in full."""
    if not track.bar.disable:
        track.bar.set_description_str(f"{track.desc} (hill climbing)", refresh=False)
    if config.sweep:
        mask, loss = _sweep(track, mask, loss, free, config, screen)
    while True:
        candidates = neighbours(mask, free, flips, config.reach)
        if screen is not None and len(candidates) > config.confirm:
            ranked = sorted(zip(screen.many(candidates, config.batch_candidates), range(len(candidates))))
            candidates = [candidates[i] for _, i in ranked[:config.confirm]]
        scored = list(zip(track.many(candidates, config.batch_candidates), candidates))
        if not scored:
            return mask, loss
        best_loss, best = min(scored)
        if best_loss >= loss:
            return mask, loss
        mask, loss = best, best_loss
