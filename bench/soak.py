"""Soak run: many generations through one long-lived pipeline with budcache plans, every output bit-exact.

``--generations`` (default 1000) pipeline calls on the tiny offline FluxPipeline (``tests.fixtures.tiny``),
in a seeded random order of steps that holds, in every block of 20 steps, at least one of each kind (a step
that raises is followed by a compared call, so it makes two calls):

* ``plan``: a single ``CachePlan`` (masks of K = 6, 8, 10; rules repeat / extrapolate / extrapolate2 and
  per-step rules; residual and output reuse; plan sigmas; an all-ones plan);
* ``planset``: a ``PlanSet`` serving several budgets, picked by ``num_inference_steps`` and the budget
  (``handle.budget = B``, ``with handle.using(budget=B)``, ``apply(..., budget=B)``, or ``budget = None``
  where one plan is held for K);
* ``plain``: no plan applied (what ``remove`` must restore);
* ``soft_interrupt``: a ``callback_on_step_end`` that sets ``pipe._interrupt`` (diffusers' own interrupt);
* ``hard_interrupt``: a ``callback_on_step_end`` that raises mid-generation, then (``handle.reset()`` half of
  the time) the next generation, compared; where that next generation changes a plan set's budget, the
  documented refusal (``handle.reset() first``) is checked before the reset;
* ``crash``: an exception raised inside the transformer's blocks (an out-of-memory stand-in), then the next
  generation, compared;
* ``cycle``: ``handle.remove()`` / ``budcache.remove(pipe)`` / ``with budcache.apply(...)`` and a fresh apply.

Batch sizes 1, 2 and 4 (``num_images_per_prompt`` or batched ``prompt_embeds``: FluxPipeline does not repeat
given ``prompt_embeds`` per image, so the two are not combined), two noise seeds and two
resolutions. Every compared output must equal (``torch.equal``) the reference of its setting: one run on a
second pipeline (a copy of the transformer) with the setting's plan freshly applied (for a plan set: the
plan it selects, applied alone), computed once per setting. ``handle.summary()`` is checked too.

Memory: resident set size after a warm-up (one pass over every setting and one call of each kind) and at
the end. Cache tensors: budcache exposes no public view of a handle's cache (``summary()`` gives counts
only), so tensors are counted with ``gc`` (every ``--gc-every`` calls, after a completed generation, against
the count after the warm-up) and, as a diagnostic, by reading the handle's internal state
(``handle.run.branches``, the stack hooks' segments) after every call.

Prints one JSON object (a tqdm bar goes to stderr); exits 1 unless RSS grew by at most 5 %, no output
differed, and nothing else failed (summaries, leaked tensors, errors).
"""

from __future__ import annotations

import argparse
import collections
import copy
import dataclasses
import gc
import hashlib
import json
import os
import random
import sys
import time
import warnings
from pathlib import Path
from typing import Any

if __name__ == "__main__":
    import _root  # noqa: F401  (tests.fixtures)

import torch

import budcache
from budcache import BudcacheError, CachePlan, PlanSet

RSS_GOAL_PCT = 5.0
BLOCK = 20  # every block of this many steps holds each kind at least once
KINDS = ("plan", "planset", "plain", "soft_interrupt", "hard_interrupt", "crash", "cycle")
WEIGHTS = {"plan": 5, "planset": 5, "plain": 1, "soft_interrupt": 1, "hard_interrupt": 2, "crash": 1, "cycle": 2}


# -- what is served ----------------------------------------------------------------------------------------------
def _configs() -> dict[str, CachePlan | PlanSet | None]:
    rules = ["repeat", "repeat", "extrapolate", "repeat", "extrapolate2", "extrapolate", "repeat", "extrapolate2"]
    return {
        "none": None,
        "r8-repeat": CachePlan(num_steps=8, budget=3, mask=budcache.uniform_mask(8, 3)),
        "r8-ext": CachePlan(num_steps=8, budget=4, mask=[1, 1, 0, 1, 0, 0, 1, 0], rule="extrapolate"),
        "r8-ext2": CachePlan(num_steps=8, budget=4, mask=[1, 1, 1, 0, 0, 1, 0, 0], rule="extrapolate2"),
        "r8-rules": CachePlan(num_steps=8, budget=4, mask=[1, 1, 0, 1, 0, 0, 1, 0], rules=rules),
        "r6-sigmas": CachePlan(
            num_steps=6,
            budget=3,
            mask=[1, 0, 1, 0, 1, 0],
            rule="extrapolate",
            sigmas=[1.0, 0.9, 0.7, 0.45, 0.3, 0.15, 0.0],
        ),
        "r6-full": CachePlan(num_steps=6, budget=6, mask=[1] * 6),
        "o6-ext": CachePlan(
            num_steps=6, budget=3, mask=budcache.uniform_mask(6, 3), reuse="output", rule="extrapolate"
        ),
        "o6-repeat": CachePlan(num_steps=6, budget=2, mask=[1, 0, 0, 1, 0, 0], reuse="output"),
        "o10-ext2": CachePlan(
            num_steps=10, budget=5, mask=[1, 1, 0, 1, 0, 1, 0, 1, 0, 0], reuse="output", rule="extrapolate2"
        ),
        "set-res": PlanSet(
            [
                CachePlan(num_steps=6, budget=2, mask=budcache.uniform_mask(6, 2)),
                CachePlan(num_steps=6, budget=3, mask=[1, 1, 0, 0, 1, 0], rule="extrapolate"),
                CachePlan(num_steps=8, budget=3, mask=[1, 0, 1, 0, 0, 1, 0, 0], rule="extrapolate2"),
                CachePlan(num_steps=8, budget=5, mask=[1, 1, 0, 1, 1, 0, 1, 0], rule="extrapolate"),
            ]
        ),
        "set-out": PlanSet(
            [
                CachePlan(num_steps=6, budget=2, mask=[1, 0, 1, 0, 0, 0], reuse="output", rule="extrapolate"),
                CachePlan(num_steps=10, budget=4, mask=budcache.uniform_mask(10, 4), reuse="output"),
            ]
        ),
    }


@dataclasses.dataclass(frozen=True)
class Setting:
    """One distinct generation: what is applied (``cfg``), K and B, prompts x images per prompt, noise seed,
    resolution, and the step after which a soft interrupt stops it (None: runs to the end)."""

    cfg: str
    k: int
    b: int
    prompts: int = 1
    images: int = 1
    seed: int = 0
    size: int = 8
    stop: int | None = None

    def __str__(self) -> str:
        s = f"{self.cfg} K={self.k} B={self.b} batch={self.prompts}x{self.images} seed={self.seed} {self.size}px"
        return s + ("" if self.stop is None else f" soft-stop@{self.stop}")


def _settings(configs: dict) -> list[Setting]:
    out = []
    for name, obj in configs.items():
        kbs = (
            [(6, 6), (8, 8)]
            if obj is None
            else [(p.num_steps, p.budget) for p in obj]
            if isinstance(obj, PlanSet)
            else [(obj.num_steps, obj.budget)]
        )
        for k, b in kbs:
            for prompts, images in ((1, 1), (1, 2), (2, 1)):
                for seed in (0, 1):
                    out.append(Setting(name, k, b, prompts, images, seed))
    out += [
        Setting("r8-ext", 8, 4, size=16),
        Setting("o6-ext", 6, 3, size=16),
        Setting("none", 8, 8, size=16),
        Setting("set-res", 8, 5, seed=1, size=16),
        Setting("r8-rules", 8, 4, 4, 1),
        Setting("set-out", 10, 4, 1, 4, seed=1),  # batch 4
        Setting("r8-ext2", 8, 4, stop=3),
        Setting("o10-ext2", 10, 5, 1, 2, stop=6),
        Setting("set-res", 8, 3, 2, 1, seed=1, stop=2),
        Setting("none", 6, 6, stop=2),
        Setting("r6-full", 6, 6, seed=1, stop=4),
    ]
    return out


# -- measuring ---------------------------------------------------------------------------------------------------
def source_digest() -> str:
    """A digest of budcache's source files (the library under test may be changing)."""
    root = Path(budcache.__file__).parent
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def rss_bytes() -> int:
    """Resident set size now (/proc/self/statm; psutil where that is missing; else the peak from resource)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        pass
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def tensor_count() -> int:
    """torch.Tensor objects the garbage collector tracks (after a collection)."""
    gc.collect()
    with warnings.catch_warnings():  # isinstance on some lazily deprecated torch objects warns
        warnings.simplefilter("ignore")
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


def internal_cache_tensors(handle: Any) -> int:
    """Cache tensors a handle holds, read from budcache's *internal* state (no public API shows them):
    the history of every branch and the stack hooks' per-call segments and residual."""
    if handle is None:
        return 0
    n = sum(len(branch.history) for branch in handle.run.branches.values())
    for hook in handle.hooks:
        stack = hook.stack
        if stack is None:
            continue
        n += stack._residual is not None
        for seg in stack.segments:
            n += sum(x is not None for x in (seg.inputs, seg.outputs, seg.pieces))
    return n


class _Stop(BaseException):
    """Raised by a callback mid-generation (a BaseException, like KeyboardInterrupt, but never a real Ctrl-C)."""


class _Crash(RuntimeError):
    """Raised inside the transformer's blocks (stands for an out-of-memory error)."""


# -- the soak ----------------------------------------------------------------------------------------------------
class Soak:
    def __init__(self, seed: int, history: int = 30):
        from tests.fixtures.tiny import tiny_flux_pipeline, tiny_flux_transformer

        self.rng = random.Random(seed)
        self.configs = _configs()
        self.settings = _settings(self.configs)
        transformer = tiny_flux_transformer()
        self.pipe = tiny_flux_pipeline(transformer)
        self.ref_pipe = tiny_flux_pipeline(copy.deepcopy(transformer))
        gen = torch.Generator().manual_seed(seed + 12345)
        self.prompts = {p: (torch.randn(p, 8, 32, generator=gen), torch.randn(p, 32, generator=gen)) for p in (1, 2, 4)}
        self.refs: dict[Setting, torch.Tensor] = {}
        self.handle = None
        self.cfg: str | None = "none"  # what is applied to self.pipe
        self.dirty = False  # a raised callback left a generation open (no reset, no call since)
        self.recent: collections.deque[str] = collections.deque(maxlen=history)
        self.calls = self.compared = 0
        self.kinds = collections.Counter()
        self.events = collections.Counter()
        self.differences: list[dict] = []
        self.summary_mismatches: list[dict] = []
        self.errors: list[dict] = []
        self.contract_violations: list[dict] = []
        self.cache_after_generation: list[dict] = []  # internal cache tensors left after a completed generation
        self.cache_after_interrupt: list[int] = []
        self.cache_after_reset: list[int] = []
        self.cache_after_crash: list[int] = []

    # -- plumbing --------------------------------------------------------------------------------------------------
    def log(self, text: str) -> None:
        self.recent.append(f"#{self.calls} {text}")

    def _plan_of(self, s: Setting) -> CachePlan | None:
        obj = self.configs[s.cfg]
        return obj.select(s.k, s.b) if isinstance(obj, PlanSet) else obj

    def _call(self, pipe, s: Setting, callback=None):
        embeds, pooled = self.prompts[s.prompts]
        return pipe(
            prompt_embeds=embeds,
            pooled_prompt_embeds=pooled,
            height=s.size,
            width=s.size,
            num_inference_steps=s.k,
            num_images_per_prompt=s.images,
            generator=torch.Generator().manual_seed(s.seed),
            output_type="latent",
            callback_on_step_end=callback,
        ).images

    @staticmethod
    def _soft(stop: int):
        def callback(pipe, i, t, kw):
            if i == stop:
                pipe._interrupt = True
            return {}

        return callback

    def reference(self, s: Setting) -> torch.Tensor:
        """The setting's output with its plan freshly applied to the second pipeline, computed once."""
        if s not in self.refs:
            plan = self._plan_of(s)
            handle = None if plan is None else budcache.apply(self.ref_pipe, plan)
            try:
                self.refs[s] = self._call(self.ref_pipe, s, None if s.stop is None else self._soft(s.stop))
            finally:
                if handle is not None:
                    handle.remove()
        return self.refs[s]

    def remove(self) -> None:
        if self.handle is None:
            return
        how = self.rng.choice(("handle.remove", "budcache.remove"))
        (self.handle.remove if how == "handle.remove" else lambda: budcache.remove(self.pipe))()
        self.log(f"{how}() [{self.cfg}]" + (" while a generation was left open" if self.dirty else ""))
        self.events["remove"] += 1
        self.handle, self.cfg, self.dirty = None, "none", False

    def ensure(self, s: Setting) -> str | None:
        """Apply what ``s`` needs (removing what else is applied); for a plan set return how its budget is set."""
        obj = self.configs[s.cfg]
        applied_with_budget = False
        if self.cfg != s.cfg:
            self.remove()
            if obj is not None:
                if isinstance(obj, PlanSet) and self.rng.random() < 0.3:
                    self.handle = budcache.apply(self.pipe, obj, budget=s.b)
                    applied_with_budget = True
                else:
                    self.handle = budcache.apply(self.pipe, obj)
                self.log(f"apply {s.cfg}" + (f" budget={s.b}" if applied_with_budget else ""))
                self.events["apply"] += 1
                self.cfg = s.cfg
        if not isinstance(obj, PlanSet):
            return None
        if applied_with_budget:
            return "apply"
        ways = ["attr", "using"] + (["only"] if len(obj.budgets(s.k)) == 1 else [])
        return self.rng.choice(ways)

    def reset(self, why: str) -> None:
        self.handle.reset()
        self.dirty = False
        self.events["reset"] += 1
        self.log(f"handle.reset() ({why})")
        held = internal_cache_tensors(self.handle)
        self.cache_after_reset.append(held)

    def _set_budget(self, budget: int | None) -> None:
        if self.dirty:  # documented: the budget cannot change while a raised exception left the generation open
            try:
                self.handle.budget = budget
            except BudcacheError as e:  # PlanError before, StateError since budcache's error family
                if "handle.reset" in str(e):
                    self.events[f"budget_refused_until_reset ({type(e).__name__})"] += 1
                else:
                    self._fail(self.contract_violations, "budget refusal without the handle.reset hint", str(e))
            else:
                self._fail(self.contract_violations, "budget change accepted while a generation was left open", "")
            self.reset("before a budget change")
        self.handle.budget = budget

    def _fail(self, where: list, what: str, detail: str, s: Setting | None = None, **extra) -> None:
        if len(where) < 20:
            where.append(
                {
                    "call": self.calls,
                    "what": what,
                    "detail": detail,
                    "setting": None if s is None else str(s),
                    **extra,
                    "recent": list(self.recent),
                }
            )
        else:
            where.append({"call": self.calls, "what": what})

    def run(self, s: Setting, callback=None, how: str | None = None):
        """One pipeline call of ``s`` on the soak pipeline (``how``: the plan set's budget mechanism)."""
        budget = s.b if how in ("attr", "using", "apply") else None
        self.calls += 1
        if how in ("attr", "only"):
            self._set_budget(budget)
        if how == "using":
            if self.dirty:
                self._set_budget(self.handle.budget)  # checks the refusal, resets
            with self.handle.using(budget=budget):
                return self._call(self.pipe, s, callback)
        return self._call(self.pipe, s, callback)

    def _expected_summary(self, s: Setting, ran: int) -> dict:
        mask = self._plan_of(s).mask
        done = sum(mask[:ran])
        counts = {"computed": done, "reused": ran - done}
        return {"cond": counts if ran == s.k else {**counts, "interrupted": True}}

    # -- step kinds ------------------------------------------------------------------------------------------------
    def generate(self, s: Setting, label: str) -> None:
        """A compared generation of ``s``."""
        how = self.ensure(s)
        ref = self.reference(s)
        try:
            out = self.run(s, None if s.stop is None else self._soft(s.stop), how)
        except Exception as e:  # noqa: BLE001 - recorded, the soak goes on
            self._fail(self.errors, f"{label}: {type(e).__name__}", str(e), s, how=how)
            self.log(f"{label} {s} [{how}] -> {type(e).__name__}: {e}")
            if self.handle is not None:
                self.reset("after the unexpected error")
            return
        self.compared += 1
        self.dirty = False
        same = torch.equal(out, ref)
        self.log(f"{label} {s}" + (f" [budget via {how}]" if how else "") + (" ok" if same else " DIFFERS"))
        if not same:
            diff = (out - ref).abs().max().item() if out.shape == ref.shape else None
            self._fail(
                self.differences,
                f"{label}: output differs from the fresh reference",
                "",
                s,
                how=how,
                max_abs_diff=diff,
                shape=list(out.shape),
                ref_shape=list(ref.shape),
            )
        if self.handle is not None:
            ran = s.k if s.stop is None else s.stop + 1
            want, got = self._expected_summary(s, ran), self.handle.summary()
            if got != want:
                self._fail(self.summary_mismatches, f"{label}: summary", f"got {got}, want {want}", s)
            held = internal_cache_tensors(self.handle)
            if held:
                self._fail(
                    self.cache_after_generation, f"{label}: {held} cache tensors held after the generation", "", s
                )

    def _pick(self, pool: list[Setting], cfg: str | None = None) -> Setting:
        if cfg is not None and self.rng.random() < 0.7:
            same = [s for s in pool if s.cfg == cfg]
            if same:
                return self.rng.choice(same)
        return self.rng.choice(pool)

    def _follow_up(self, cfg: str, probe) -> None:
        """After an interrupted call: sometimes reset, then the next generation (mostly on the same handle)."""
        if self.handle is not None and self.rng.random() < 0.5:
            self.reset("after the exception")
            probe("after_reset")
        elif self.handle is not None:
            self.events["follow_up_without_reset"] += 1
        s = self._pick(self.plain_settings, cfg)
        if s.cfg == cfg and self.handle is not None:
            self.events["follow_up_on_the_same_handle"] += 1
        self.generate(s, "after-exception")
        probe("after_next")

    def hard_interrupt(self, s: Setting, probe) -> None:
        how = self.ensure(s)
        at = self.rng.randrange(s.k)

        def raising(pipe, i, t, kw):
            if i == at:
                raise _Stop
            return {}

        try:
            self.run(s, raising, how)
        except _Stop:
            self.dirty = self.handle is not None and how != "using"  # using() ends the generation on the way out
            self.log(f"hard-interrupt {s} [{how}] raised at step {at}")
        except Exception as e:  # noqa: BLE001
            self._fail(self.errors, f"hard-interrupt: {type(e).__name__}", str(e), s, how=how)
            self.log(f"hard-interrupt {s} -> {type(e).__name__}: {e}")
        else:
            self._fail(self.errors, "hard-interrupt: the callback's exception did not escape", "", s, how=how)
        if self.handle is not None:
            want, got = self._expected_summary(s, at + 1), self.handle.summary()
            if got != want:
                self._fail(self.summary_mismatches, "hard-interrupt: summary", f"got {got}, want {want}", s)
            self.cache_after_interrupt.append(internal_cache_tensors(self.handle))
        probe("after_interrupt")
        self._follow_up(s.cfg, probe)

    def crash(self, s: Setting, probe) -> None:
        how = self.ensure(s)
        at = self.rng.randint(1, s.b)  # the at-th call of the first block: computed steps always reach it
        calls = [0]

        def boom(module, args, kwargs):
            calls[0] += 1
            if calls[0] == at:
                raise _Crash("stand-in for an out-of-memory error")

        hook = self.pipe.transformer.transformer_blocks[0].register_forward_pre_hook(boom, with_kwargs=True)
        try:
            self.run(s, None, how)
        except _Crash:
            self.log(f"crash {s} [{how}] raised in block call {at}")
        except Exception as e:  # noqa: BLE001
            self._fail(self.errors, f"crash: {type(e).__name__}", str(e), s, how=how)
        else:
            self._fail(self.errors, "crash: the exception did not escape", "", s, how=how)
        finally:
            hook.remove()
        self.cache_after_crash.append(internal_cache_tensors(self.handle))
        self._follow_up(s.cfg, probe)

    def cycle(self) -> None:
        """Remove what is applied and apply afresh (the same configuration where one is applied)."""
        cfg = self.cfg if self.cfg != "none" else self.rng.choice([c for c in self.configs if c != "none"])
        s = self._pick([x for x in self.plain_settings if x.cfg == cfg])
        if self.rng.random() < 0.3:  # a context manager around one generation
            self.remove()
            obj = self.configs[cfg]
            ref = self.reference(s)
            self.calls += 1
            try:
                with budcache.apply(self.pipe, obj, **({"budget": s.b} if isinstance(obj, PlanSet) else {})) as h:
                    self.events["apply"] += 1
                    out = self._call(self.pipe, s)
                    summary = h.summary()
            except Exception as e:  # noqa: BLE001
                self._fail(self.errors, f"with apply(): {type(e).__name__}", str(e), s)
                return
            self.events["remove"] += 1
            self.compared += 1
            same = torch.equal(out, ref)
            self.log(f"with apply({cfg}): {s}" + (" ok" if same else " DIFFERS"))
            if not same:
                self._fail(self.differences, "with apply(): output differs", "", s)
            if summary != self._expected_summary(s, s.k):
                self._fail(self.summary_mismatches, "with apply(): summary", f"got {summary}", s)
            return
        self.remove()
        self.generate(s, "cycle")

    # -- driving ---------------------------------------------------------------------------------------------------
    @property
    def plain_settings(self) -> list[Setting]:
        return [s for s in self.settings if s.stop is None]

    def pool(self, kind: str) -> list[Setting]:
        single = {n for n, o in self.configs.items() if isinstance(o, CachePlan)}
        sets = {n for n, o in self.configs.items() if isinstance(o, PlanSet)}
        plain = self.plain_settings
        return {
            "plan": [s for s in plain if s.cfg in single],
            "planset": [s for s in plain if s.cfg in sets],
            "plain": [s for s in plain if s.cfg == "none"],
            "soft_interrupt": [s for s in self.settings if s.stop is not None],
        }.get(kind, plain)

    def step(self, kind: str, probe) -> None:
        self.kinds[kind] += 1
        if kind == "hard_interrupt":
            self.hard_interrupt(self._pick(self.pool(kind), self.cfg), probe)
        elif kind == "crash":
            self.crash(self._pick(self.pool(kind), self.cfg), probe)
        elif kind == "cycle":
            self.cycle()
        else:
            self.generate(self._pick(self.pool(kind), self.cfg), kind)

    def schedule(self):
        """Kinds forever: each block of BLOCK holds every kind once, the rest drawn by WEIGHTS, shuffled."""
        names, weights = list(WEIGHTS), list(WEIGHTS.values())
        while True:
            block = list(KINDS) + self.rng.choices(names, weights, k=BLOCK - len(KINDS))
            self.rng.shuffle(block)
            yield from block


def soak(
    generations: int = 1000,
    seed: int = 0,
    *,
    gc_every: int = 50,
    interrupt_probes: int = 8,
    progress: bool = True,
    threads: int | None = 1,
) -> dict:
    """Run the soak (see the module docstring) and return its results (``ok``: every goal met)."""
    if threads is not None:
        torch.set_num_threads(threads)
    t_setup = time.perf_counter()
    with torch.no_grad():
        soak = Soak(seed)
        # warm-up: every setting once (computing its reference), and one call of each exception kind
        for s in soak.settings:
            soak.generate(s, "warm-up")
        noop = lambda _where: None  # noqa: E731
        soak.hard_interrupt(soak.plain_settings[10], noop)
        soak.crash(soak.plain_settings[20], noop)
        soak.remove()
        warm_calls, warm_s = soak.calls, time.perf_counter() - t_setup

        counting = bool(gc_every or interrupt_probes)  # gc counts take about a second each here
        baseline = tensor_count() if counting else 0
        rss_start = rss_bytes()
        gc_samples: list[int] = []
        gc_s = 0.0
        probes: dict[str, list[int]] = collections.defaultdict(list)

        active = [False]  # the first interrupt_probes hard interrupts are followed with gc counts

        def probe(where: str) -> None:
            nonlocal gc_s
            if where == "after_interrupt":
                active[0] = len(probes[where]) < interrupt_probes
            if active[0]:
                t = time.perf_counter()
                probes[where].append(tensor_count() - baseline)
                gc_s += time.perf_counter() - t
            if where == "after_next":
                active[0] = False

        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=generations, desc="soak", unit="gen", file=sys.stderr)
        start_calls, t0 = soak.calls, time.perf_counter()
        kinds = soak.schedule()
        next_gc = gc_every
        while soak.calls - start_calls < generations:
            before = soak.calls
            soak.step(next(kinds), probe)
            done = soak.calls - start_calls
            if bar is not None:
                bar.update(min(done, generations) - min(before - start_calls, generations))
                bar.set_postfix(differ=len(soak.differences), errors=len(soak.errors), refresh=False)
            if gc_every and done >= next_gc:
                next_gc += gc_every
                t = time.perf_counter()
                gc_samples.append(tensor_count() - baseline)
                gc_s += time.perf_counter() - t
        if bar is not None:
            bar.close()
        seconds = time.perf_counter() - t0
        soak.remove()
        end_extra = tensor_count() - baseline if counting else None
        rss_end = rss_bytes()

    calls = soak.calls - start_calls
    growth = 100.0 * (rss_end - rss_start) / rss_start
    leaked = bool(end_extra) or any(x > 0 for x in gc_samples) or bool(soak.cache_after_generation)
    goals = {"memory_flat_within_5pct": growth <= RSS_GOAL_PCT, "zero_differing_outputs": not soak.differences}
    ok = all(goals.values()) and not (leaked or soak.errors or soak.summary_mismatches or soak.contract_violations)
    return {
        "generations": calls,
        "seed": seed,
        "threads": torch.get_num_threads(),
        "budcache_source": source_digest(),
        "distinct_settings": len(soak.settings),
        "references": len(soak.refs),
        "kinds": dict(soak.kinds),
        "events": dict(soak.events),
        "compared_outputs": soak.compared,
        "differing_outputs": len(soak.differences),
        "rss_start_mb": round(rss_start / 2**20, 2),
        "rss_end_mb": round(rss_end / 2**20, 2),
        "rss_growth_pct": round(growth, 3),
        "seconds": round(seconds, 2),
        "generations_per_s": round(calls / seconds, 2),
        "generations_per_s_without_gc_counts": round(calls / max(seconds - gc_s, 1e-9), 2),
        "gc_count_seconds": round(gc_s, 2),
        "warmup_calls": warm_calls,
        "warmup_seconds": round(warm_s, 2),
        "tensors": {
            "gc_baseline": baseline if counting else None,
            "gc_extra_at_end": end_extra,
            "gc_extra_samples_after_generations": gc_samples,
            "gc_extra_probes": dict(probes),
            "internal_cache_after_completed_generations": len(soak.cache_after_generation),
            "internal_cache_after_hard_interrupt": _stats(soak.cache_after_interrupt),
            "internal_cache_after_reset": _stats(soak.cache_after_reset),
            "internal_cache_after_crash": _stats(soak.cache_after_crash),
            "leak": leaked,
        },
        "differences": soak.differences,
        "summary_mismatches": soak.summary_mismatches,
        "errors": soak.errors,
        "contract_violations": soak.contract_violations,
        "cache_leaks": soak.cache_after_generation,
        "goals": goals,
        "ok": ok,
    }


def _stats(xs: list[int]) -> dict:
    return {"n": len(xs), "min": min(xs, default=None), "max": max(xs, default=None)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--generations", type=int, default=1000, help="pipeline calls after the warm-up (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="order of the calls, prompts (default 0)")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--gc-every", type=int, default=50, help="count tensors with gc every N calls (0: never)")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    result = soak(a.generations, a.seed, gc_every=a.gc_every, progress=not a.no_progress, threads=a.threads)
    text = json.dumps(result, indent=1)
    if a.out is not None:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text + "\n")
    print(text)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
