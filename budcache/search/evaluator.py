"""The stage-1 objective with memoization and prefix reuse.

The loss of a mask is the mean, over the calibration set, of the distance between the
student's final latent and the full-compute teacher's final latent. The state before step p
depends only on ``mask[:p]``, so states are stored by prefix: a mask that first differs from
an evaluated one at step p resumes from step p instead of step 0.
"""

from __future__ import annotations

import copy
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence

import torch
import torch.distributed as dist

from ..sampling.denoisers import Batch
from ..sampling.loop import State, advance, sample
from ..sampling.rules import Schedule, check_rules, code_rule, decode, encode, history_depth
from ..sampling.shift import shifted
from ..sampling.solver import Solver, as_solver, state_bytes
from .ledger import Ledger

Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
METRICS: dict[str, Distance] = {
    "mse": lambda a, b: (a - b).pow(2).flatten(1).mean(1),
    "l1": lambda a, b: (a - b).abs().flatten(1).mean(1),
}


def _nbytes(states: list[State]) -> int:
    return sum(s.x.nbytes + sum(c.nbytes for _, c in s.history) + state_bytes(s.solver) for s in states)


class Evaluator:
    """Scores masks against the teacher on fixed calibration batches, counting transformer forwards
    and charging each trajectory to the search's :class:`~budcache.search.ledger.Ledger` before it runs.

    Under ``torch.distributed`` each rank holds its shard of the calibration samples and every
    loss is all-reduced, so all ranks see the same losses and, with the same seed, take the same
    search decisions (``forwards`` stays per rank)."""

    def __init__(
        self,
        batches: Sequence[Batch],
        sigmas: Sequence[float] | Solver,
        metric: str = "mse",
        prefix_reuse: bool = True,
        max_state_mb: float = 1024.0,
        rule: str = "repeat",
        rules_in_play: Sequence[str] = (),
        restarts: Collection[int] = (),
        teacher_sigmas: Sequence[float] | Solver | None = None,
    ):
        """``rule``: how reused steps read the cache when a plain 0/1 mask is scored;
        ``rules_in_play``: other rules that scored schedules may use (sets the cache depth);
        ``restarts``: steps where the cache starts afresh (another expert; they must compute);
        ``teacher_sigmas``: the teacher's schedule when it is not the search grid (stage 2).
        ``sigmas`` (and ``teacher_sigmas``) are a schedule stepped by Euler, or a solver (a
        diffusers scheduler's step: :class:`~budcache.sampling.solver.SchedulerSolver`)."""
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; choose one of {sorted(METRICS)}")
        if not batches:
            raise ValueError("the calibration set is empty")
        self.batches = list(batches)
        self.solver = as_solver(sigmas)
        self.sigmas = [float(s) for s in self.solver.sigmas]
        self.num_steps = len(self.sigmas) - 1
        self.metric, self.distance = metric, METRICS[metric]
        self.prefix_reuse, self.max_state_bytes = prefix_reuse, int(max_state_mb * 2**20)
        self.samples = sum(b.noise.shape[0] for b in self.batches)
        self.rule = check_rules(rule, 1)[0]
        self.depth = history_depth(check_rules([rule, *rules_in_play], 1 + len(rules_in_play)))
        self.restarts = frozenset(restarts)
        self.distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.memo: dict[Schedule, float] = {}
        self.spreads: dict[Schedule, float] = {}  # coefficient of variation of the per-sample distances
        self.by_size: dict[Schedule, dict[str, float]] = {}  # the loss per size of a calibration of several sizes
        self.states: OrderedDict[Schedule, list[State]] = OrderedDict()
        self.state_bytes = 0
        self.forwards = 0  # block-stack executions summed over calibration samples (screening subsets included)
        self.reused_calls = 0  # reused steps called outside a trajectory (the teacher surrogate), summed likewise
        self.from_scratch = 0  # what the same trajectories would have executed, each from step 0 (no prefix reuse)
        self.root = self  # the evaluator whose forwards this one counts (see subset)
        self.ledger = Ledger()  # forwards per calibration sample charged, against the search's cap
        self.prefixes: set[Schedule] = set()  # every prefix of every schedule scored (nominal costs, see Ledger)
        self._replayed: set[Schedule] = set()  # schedules answered from a checkpoint and not yet asked for
        self.subsets: dict[int, Evaluator] = {}
        self._saved_subsets: dict[int, dict] = {}
        self._shifted: dict[tuple[int, float], tuple[Solver, Solver]] = {}  # (id, shift) -> (solver, the batch's)
        started = time.perf_counter()
        if teacher_sigmas is None:
            self.teacher = [s.x for s in self._run((1,) * self.num_steps)]
        else:
            teacher = as_solver(teacher_sigmas)
            self.teacher = [s.x for s in self._run((1,) * (len(teacher.sigmas) - 1), teacher)]
        if self.teacher[0].is_cuda:
            torch.cuda.synchronize(self.teacher[0].device)
        self.teacher_seconds = time.perf_counter() - started  # the teacher's wall time (projects a search's time)

    # -- trajectories -----------------------------------------------------------------------
    def _solver(self, batch: Batch, solver: Solver) -> Solver:
        """``solver`` as ``batch`` runs it: over its sigmas shifted by the batch's ``shift`` (a calibration of
        several sizes), else itself."""
        if batch.shift == 1.0:
            return solver
        key = (id(solver), batch.shift)  # the solver is kept with its shifted twin: its id is not reused
        if key not in self._shifted:
            self._shifted[key] = (solver, shifted(solver, batch.shift))
        return self._shifted[key][1]

    def _store(self, key: Schedule, states: list[State]) -> None:
        if not self.prefix_reuse or key in self.states:
            return
        self.states[key] = states
        self.state_bytes += _nbytes(states)
        while self.state_bytes > self.max_state_bytes and self.states:
            _, old = self.states.popitem(last=False)
            self.state_bytes -= _nbytes(old)

    def _resume(self, mask: Schedule) -> list[State]:
        if self.prefix_reuse:
            for p in range(len(mask) - 1, 0, -1):
                states = self.states.get(mask[:p])
                if states is not None:
                    self.states.move_to_end(mask[:p])
                    return states
        return [State(0, b.noise) for b in self.batches]

    @torch.no_grad()
    def _run(self, key: Schedule, sigmas: Sequence[float] | Solver | None = None) -> list[State]:
        """Final states of every batch for a schedule (the one loop, each batch from its stored
        prefix); prefix states are stored on the search grid. Finiteness is not checked per step (a
        host-device synchronisation each): NaN/inf propagate to the final state, which scores inf."""
        on_grid = sigmas is None
        solver = self.solver if on_grid else as_solver(sigmas)
        starts = self._resume(key) if on_grid else [State(0, b.noise) for b in self.batches]
        self._charge([key], [starts[0].step], on_grid)
        mask, rules = decode(key)
        trail: list[list[State]] = [[] for _ in key]  # per step: every batch's state after it
        finals = []
        for b, start in zip(self.batches, starts):
            x = sample(
                b.denoiser,
                b.noise,
                self._solver(b, solver),
                mask,
                rules,
                restarts=self.restarts,
                depth=self.depth,
                start=start,
                callback=lambda info: trail[info.step].append(info.state),
                check_finite=False,
            )
            finals.append(State(len(key), x))
        self.root.forwards += self.samples * sum(mask[starts[0].step :])
        self.root.from_scratch += self.samples * sum(mask)
        if on_grid:
            for k in range(starts[0].step, len(key) - 1):
                self._store(key[: k + 1], trail[k])
        return finals

    def _nominal(self, key: Schedule) -> int:
        """The step a trajectory of ``key`` would start at with every scored prefix's state at hand."""
        return next((p for p in range(len(key) - 1, 0, -1) if key[:p] in self.prefixes), 0)

    def _charge(self, keys: list[Schedule], steps: list[int], on_grid: bool = True) -> None:
        """Charge the trajectories of ``keys`` from ``steps`` to the ledger (raising ``Spent`` before
        any runs when they do not fit), at the nominal cost when the ledger asks for it."""
        if on_grid and self.root.ledger.nominal:
            steps = [self._nominal(k) for k in keys]
        computed = sum(sum(1 for c in k[s:] if c == 1) for k, s in zip(keys, steps))
        self.root.ledger.charge(computed * self.samples / self.root.samples)
        if on_grid:
            self.prefixes.update(k[:p] for k in keys for p in range(1, len(k)))

    def cost(self, mask: Sequence[int]) -> float:
        """What scoring ``mask`` would charge now, in forwards per calibration sample (0 when memoized)."""
        key = self.schedule(mask)
        if key in self.memo and key not in self._replayed:
            return 0.0
        step = self._nominal(key) if self.root.ledger.nominal or key in self._replayed else self._resume(key)[0].step
        return sum(1 for c in key[step:] if c == 1) * self.samples / self.root.samples

    def _loss(self, finals: list[State], key: Schedule | None = None) -> float:
        """Mean distance per sample, over every rank's samples under ``torch.distributed``; with a
        ``key``, the spread of the per-sample distances is kept in ``spreads``."""
        d = torch.cat([self.distance(s.x.float(), t.float()).double() for s, t in zip(finals, self.teacher)])
        total = torch.stack([d.sum(), d.pow(2).sum(), torch.tensor(float(self.samples), dtype=torch.float64)])
        if self.distributed:
            dist.all_reduce(total)
        loss = float(total[0] / total[2])
        if key is not None and loss > 0 and math.isfinite(loss):
            self.spreads[key] = math.sqrt(max(0.0, float(total[1] / total[2]) - loss**2)) / loss
        if key is not None and self.batches[0].size and not self.distributed:
            rows: dict[str, list[int]] = {}  # each size's rows of d, in the order of the batches
            start = 0
            for b in self.batches:
                rows.setdefault(b.size, []).extend(range(start, start + b.noise.shape[0]))
                start += b.noise.shape[0]
            self.by_size[key] = {size: float(d[r].mean()) for size, r in rows.items()}
        return loss if loss == loss and loss != float("inf") else float("inf")

    # -- public -----------------------------------------------------------------------------
    def schedule(self, mask: Sequence[int]) -> Schedule:
        """A 0/1 mask under this evaluator's rule, or a schedule (no zeros) as it is."""
        key = tuple(int(m) for m in mask)
        return encode(key, self.rule) if 0 in key else key

    def __call__(self, mask: Sequence[int]) -> float:
        """Loss of a 0/1 mask (reusing by ``rule``) or of a schedule, on the search grid (memoized);
        ``inf`` for a non-finite trajectory."""
        key = self.schedule(mask)
        if len(key) != self.num_steps:
            raise ValueError(f"mask has {len(key)} steps, the search grid has {self.num_steps}")
        if key in self._replayed:  # answered from a checkpoint: charged as the interrupted search was
            self._charge([key], [self._nominal(key)])
            self._replayed.discard(key)
        if key not in self.memo:
            self.memo[key] = self._loss(self._run(key), key)
        return self.memo[key]

    def many(self, masks: Sequence[Sequence[int]], group: int = 1) -> list[float]:
        """Losses of several masks; new ones are advanced ``group`` at a time in batched forwards
        (each batch's ``replicate``), every candidate from its own stored prefix."""
        keys = [self.schedule(m) for m in masks]
        new = list(dict.fromkeys(k for k in keys if k not in self.memo))
        if group > 1 and len(new) > 1 and all(b.replicate is not None for b in self.batches):
            for i in range(0, len(new), group):
                chunk = new[i : i + group]
                if not self.root.ledger.fits(sum(self.cost(k) for k in chunk)):
                    break  # one at a time below, until the cap
                for key, finals in zip(chunk, self._run_many(chunk)):
                    self.memo[key] = self._loss(finals, key)
        return [self(k) for k in keys]

    @torch.no_grad()
    def _run_many(self, keys: list[Schedule]) -> list[list[State]]:
        """Final states of several schedules, advanced together step by step: the candidates that
        compute (or reuse) at a step share one batched forward per batch (``Batch.replicate``)."""
        states = [list(self._resume(key)) for key in keys]  # own lists: stored prefixes are shared
        self._charge(keys, [s[0].step for s in states])
        self.root.from_scratch += self.samples * sum(sum(1 for c in key if c == 1) for key in keys)
        for k in range(min(s[0].step for s in states), self.num_steps):
            active = [c for c, s in enumerate(states) if s[0].step == k]
            for compute in (True, False):
                group = [c for c in active if (keys[c][k] == 1) == compute]
                if not group:
                    continue
                rules = [code_rule(keys[c][k]) for c in group]
                for bi, b in enumerate(self.batches):
                    moved, _ = advance(
                        b.replicate(len(group)),
                        [states[c][bi] for c in group],
                        self._solver(b, self.solver),
                        compute,
                        rules,
                        self.depth,
                        k in self.restarts,
                    )
                    for c, state in zip(group, moved):
                        states[c][bi] = state
                if compute:
                    self.root.forwards += self.samples * len(group)
            for c in active:
                if k + 1 < self.num_steps:
                    self._store(keys[c][: k + 1], list(states[c]))
        return states

    def subset(self, share: float) -> Evaluator | None:
        """An evaluator on ``share`` of this one's calibration batches (at least one, spread evenly),
        scoring against the same teacher (no forwards) and counting its forwards here; ``None`` when
        the share would be every batch. Cheap ranking of candidates (see ``SearchConfig.screen``)."""
        n = len(self.batches)
        m = max(1, round(n * share))
        if m >= n:
            return None
        if m not in self.subsets:
            picks = [round(i * n / m) for i in range(m)]
            child = copy.copy(self)
            child.batches, child.teacher = [self.batches[i] for i in picks], [self.teacher[i] for i in picks]
            child.samples = sum(b.noise.shape[0] for b in child.batches)
            child.memo, child.spreads, child.states, child.state_bytes, child.subsets = {}, {}, OrderedDict(), 0, {}
            child.by_size = {}
            child.prefixes, child._replayed = set(), set(self._saved_subsets.get(m, {}))
            child.memo.update(self._saved_subsets.get(m, {}))
            self.subsets[m] = child
        return self.subsets[m]

    def schedule_loss(self, sigmas: Sequence[float] | Solver) -> float:
        """Loss of plain Euler over another schedule (e.g. B evenly spaced steps), not memoized."""
        solver = as_solver(sigmas)
        return self._loss(self._run((1,) * (len(solver.sigmas) - 1), solver))

    def state_dict(self) -> dict:
        """What a checkpoint keeps: the memo table (schedule -> loss) and the spreads, the subsets'
        tables (by their number of batches) and the forwards spent."""
        return {
            "memo": dict(self.memo),
            "forwards": self.forwards,
            "from_scratch": self.from_scratch,
            "spreads": dict(self.spreads),
            "subsets": {m: dict(child.memo) for m, child in self.subsets.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        """Answer the saved evaluations from memory from now on (see :mod:`.checkpoint`)."""
        self.memo.update(state["memo"])
        self.spreads.update(state.get("spreads", {}))
        self._replayed = set(state["memo"])
        self.forwards = int(state["forwards"])
        self.from_scratch = int(state.get("from_scratch", 0))
        self.ledger.nominal = True
        self._saved_subsets = {int(m): dict(memo) for m, memo in state.get("subsets", {}).items()}
        for m, child in self.subsets.items():
            child.memo.update(self._saved_subsets.get(m, {}))
            child._replayed = set(self._saved_subsets.get(m, {}))

    @property
    def evaluations(self) -> int:
        return len(self.memo)
