"""``budcache.apply(pipe, plan)``: run a plan inside a diffusers pipeline, per instance.

A stateful ``ModelHook`` on every expert (``transformer``, and Wan2.2's ``transformer_2``)
decides compute or reuse from the plan's mask and feeds the block-stack hooks (``residual``) or
returns the cached output (``output``). Inside a pipeline the step index is the scheduler's
``step_index`` and every ``set_timesteps`` call (the start of a generation, also after an
interrupted one) clears all caches; each expert keeps one cache per branch: its cache context
(``cond`` / ``uncond``) or, for pipelines that set none, the call's position within the step.
A transformer used without a scheduler counts its calls per branch, restarting on a timestep
that repeats or turns back. Another batch size also restarts a branch, so stale cache is never
reused. A plan with ``sigmas`` makes the scheduler produce exactly those sigmas.

Compiled transformers: inside a pipeline every decision is host-side Python data known before the
call (the step from the scheduler's ``step_index``, the sigmas copied to the host when the scheduler
sets its timesteps), so the plan adds no host-device synchronisation and the compiled regions only
see the mode of the block-stack hooks (one graph per mode). The plan hook itself must stay outside
the compiled region: compile the blocks (``compile_repeated_blocks``, before or after ``apply``) or
wrap the whole transformer (``pipe.transformer = torch.compile(pipe.transformer)``) before ``apply``.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import threading
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import StateManager

from ..checks import check_pipeline
from ..errors import StateError
from ..families import time_rule
from ..plan import CachePlan, PlanError
from ..planset import PlanSet, resolve
from ..sampling.rules import history_depth, predict, remember
from . import outputs
from . import stack as residual
from .conflicts import check_no_other_cache
from .experts import context_name, contexts, experts, input_positions, original_forward, step_index
from .override import override, restore

_HOOK = "budcache_plan"
_CONTEXT = "budcache_context"
_INSIDE_COMPILE = (
    "budcache: the plan hook is being compiled with the transformer; torch.compile wrapped the transformer "
    "after budcache.apply, so the plan cannot decide its steps outside the compiled region (fullgraph=False "
    "would run it eagerly). Compile first, then apply: pipe.transformer = torch.compile(pipe.transformer, ...); "
    "budcache.apply(pipe, plan) (or compile only the blocks, pipe.transformer.compile_repeated_blocks(...), "
    "in either order)"
)
_OTHER_THREAD = (
    "budcache: this pipeline is generating in another thread; a diffusers pipeline (its scheduler, its cache) "
    "serves one generation at a time: give each thread its own pipeline (they may share the transformer's "
    "weights only without a plan on it), or serialise the calls with a lock"
)


class _Branch:
    """Progress and cache of one branch of one expert through a generation."""

    step: int
    last_t: float | None  # the timestep of the last call (outside a pipeline)
    batch: int | None
    direction: float

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.step, self.last_t, self.batch, self.direction = 0, None, None, 0.0
        self.history: tuple[tuple[float, torch.Tensor], ...] = ()
        self.template: Any = None  # output reuse: the structure of the last computed output


class _Run:
    """What the hooks of all experts share: branches, and the counts of the last generation (per
    summary key), ``done`` once the generation reached its last step."""

    step: int | None  # the pipeline's step of the last call
    owner: int | None  # the thread whose generation runs

    def __init__(self, num_experts: int):
        self.num_experts = num_experts
        self.counts: dict[str, dict[str, int]] = {}
        self.done: set[str] = set()
        self.budget: int | None = None  # a plan set's budget for the next generations
        self.reset()

    def reset(self) -> None:
        """Clear the caches (the pipeline does it after every call); the counts stay for ``summary``.
        A generation in a pipeline is over (``generating``: between ``set_timesteps`` and this)."""
        self.branches: dict[tuple[str, str], _Branch] = {}
        self.step, self.calls_in_step = None, 0
        self.sigmas: list[float] | None = None  # the scheduler's sigmas on the host, set with its timesteps
        self.generating, self.owner = False, None  # the thread whose generation runs

    def start(self) -> None:
        """A generation starts (``set_timesteps``): the last one's counts are over."""
        self.reset()
        self.counts, self.done = {}, set()

    def branch(self, expert: str, name: str) -> _Branch:
        return self.branches.setdefault((expert, name), _Branch())

    def count(self, expert: str, name: str, computed: bool, step: int) -> str:
        """Count step ``step`` of a branch (its first one starts the branch's counts afresh); returns
        the branch's summary key."""
        key = name if self.num_experts == 1 else f"{expert}/{name}"
        if step == 0:
            self.counts.pop(key, None)
            self.done.discard(key)
        counts = self.counts.setdefault(key, {"computed": 0, "reused": 0})
        counts["computed" if computed else "reused"] += 1
        return key


class _ContextHook(ModelHook):
    """On a transformer wrapped by ``torch.compile``: receives the pipeline's cache context (which
    diffusers sets on the wrapped module's stateful hooks) for the plan hook on the wrapper."""

    _is_stateful = True

    def __init__(self, manager: StateManager):
        super().__init__()
        self.contexts = manager

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        return module


class _PlanHook(ModelHook):
    _is_stateful = True

    def __init__(
        self, plan: CachePlan, stack: residual.StackState | None, scheduler: Any, expert: str, run: _Run, model: type
    ):
        super().__init__()
        self.stack, self.scheduler, self.expert, self.run = stack, scheduler, expert, run
        self.use(plan)
        self.contexts = contexts()  # receives the pipeline's cache_context name
        self.in_pipeline = scheduler is not None and hasattr(scheduler, "step_index") and hasattr(scheduler, "sigmas")
        self.positions = input_positions(model)
        self.installed: Any = None
        self.removed = False

    def use(self, plan: CachePlan) -> None:
        """Follow ``plan`` from now on (a plan set's pick, made when a generation starts)."""
        self.plan, self.rules, self.depth = plan, plan.step_rules, history_depth(plan.step_rules)

    def _inputs(self, args: tuple, kwargs: dict) -> tuple[float | None, int]:
        """The call's timestep (``timestep`` or ``t``; None inside a pipeline, which needs none: reading
        a device tensor would synchronise) and batch size."""
        hidden_name, t_name, t_index = self.positions
        hidden = args[0] if args else kwargs[hidden_name]
        batch = hidden.shape[0] if torch.is_tensor(hidden) else len(hidden)
        if self.in_pipeline:
            return None, batch
        t = kwargs[t_name] if t_name in kwargs else args[t_index]
        return float(torch.as_tensor(t).flatten()[0]), batch

    def _locate(self, t: float | None) -> tuple[int, str, _Branch, float]:
        """(step, branch name, branch state, the sigma rules extrapolate in) of this call."""
        context = context_name(self.contexts)
        run = self.run
        if self.in_pipeline:
            k = step_index(self.scheduler)
            run.calls_in_step = run.calls_in_step + 1 if k == run.step else 1
            run.step = k
            name = context or ("default" if run.calls_in_step == 1 else f"call{run.calls_in_step}")
            sigma = run.sigmas[k] if run.sigmas is not None else float(self.scheduler.sigmas[k])
            begin = getattr(self.scheduler, "begin_index", None) or 0  # image-to-image: strength < 1
            self.plan.check_begin(begin)
            return k - begin, name, run.branch(self.expert, name), sigma
        assert t is not None  # _inputs reads the timestep outside a pipeline
        name = context or "default"
        state = run.branch(self.expert, name)
        d = t - cast(float, state.last_t) if state.step else 0.0  # a branch past its first step has its last_t
        if state.step and (d == 0 or d * state.direction < 0):  # a timestep that repeats or turns back
            state.reset()
        return state.step, name, state, t

    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        if self.removed:  # removed while a feature's wrapper applied after it still calls it
            return original_forward(self)(*args, **kwargs)
        if torch.compiler.is_compiling():
            raise StateError(_INSIDE_COMPILE)
        if self.run.owner is not None and self.run.owner != threading.get_ident():
            raise StateError(_OTHER_THREAD)
        try:
            return self._forward(module, *args, **kwargs)
        except BaseException:
            self.run.generating, self.run.owner = False, None  # the exception ends the generation
            raise

    def _forward(self, module: torch.nn.Module, *args, **kwargs):
        t, batch = self._inputs(args, kwargs)
        k, name, state, sigma = self._locate(t)
        if batch != state.batch:
            state.reset()
        if k >= self.plan.num_steps:
            raise PlanError(f"step {k} is beyond the plan's {self.plan.num_steps} steps")
        if k == 0 and self.stack is not None:
            self.stack.check(getattr(module, "_orig_mod", module))
        compute = bool(self.plan.mask[k])
        if not compute and not state.history:
            raise PlanError(
                f"the plan reuses step {k}, but {self.expert} ({name}) has computed nothing since the "
                "generation started; the plan was made for another pipeline set-up (e.g. another "
                "expert boundary)"
            )
        try:
            if self.stack is None:  # output reuse: the whole transformer call is skipped
                if compute:
                    out = original_forward(self)(*args, **kwargs)
                    state.template = outputs.template(out)
                    state.history = remember(state.history, sigma, outputs.pack(out), self.depth)
                else:
                    out = outputs.unpack(state.template, predict(state.history, sigma, self.rules[k]))
            else:
                with self.stack.step(None if compute else predict(state.history, sigma, self.rules[k])) as stack:
                    out = original_forward(self)(*args, **kwargs)
                    if compute:  # a computed step leaves its residual
                        state.history = remember(state.history, sigma, cast(torch.Tensor, stack.residual), self.depth)
        except BaseException:
            state.reset()
            raise
        key = self.run.count(self.expert, name, compute, k)
        if state.step == 1 and t is not None:
            state.direction = t - cast(float, state.last_t)  # set by the branch's first call
        state.step, state.last_t, state.batch = k + 1, t, batch
        if k + 1 == self.plan.num_steps:  # a generation finished (in a pipeline: every branch of it)
            self.run.done.update(self.run.counts if self.in_pipeline else (key,))
            if self.in_pipeline:
                state.history, state.template = (), None  # not every pipeline resets its transformer's state
            else:
                state.reset()
        return out

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.run.reset()
        return module


class CacheHandle:
    """What :func:`apply` installed; ``remove()`` restores the pipeline exactly.

    With a plan set, ``plan`` is the plan of the current (or last) generation, picked when it starts
    by its ``num_inference_steps`` and ``budget`` (``handle.budget = 8`` between calls, or
    ``with handle.using(budget=8): pipe(...)``)."""

    def __init__(
        self,
        experts: dict[str, torch.nn.Module],
        run: _Run,
        scheduler: Any,
        plan: CachePlan | None,
        plans: PlanSet | None = None,
    ):
        self.experts, self.run, self.scheduler, self.plan, self.plans = experts, run, scheduler, plan, plans
        self.hooks: list[_PlanHook] = []

    def _plan(self) -> CachePlan:
        """``plan``, known where this is called: a handle's one plan, or the running generation's."""
        assert self.plan is not None
        return self.plan

    @property
    def budget(self) -> int | None:
        """The budget of the next generations: a plan set's choice (None: the only one held for the
        call's step count), or the single plan's budget."""
        return self.run.budget if self.plans is not None else self._plan().budget

    @budget.setter
    def budget(self, budget: int | None) -> None:
        if self.run.generating:
            raise PlanError(
                f"the budget cannot change during a generation (B={self._plan().budget} is running); "
                "set it between pipeline calls (after an exception ended a generation midway: "
                "handle.reset() first)"
            )
        if self.plans is None:
            plan = self._plan()
            if budget != plan.budget:
                raise PlanError(
                    f"this handle holds one plan (B={plan.budget} of {plan.num_steps} steps); "
                    "apply a plan set (budcache.PlanSet) to choose the budget per call"
                )
            return
        if budget is not None and budget not in self.plans.budgets():
            raise PlanError(f"this plan set holds no plan at budget {budget!r}; it holds {self.plans.holdings()}")
        self.run.budget = budget

    @contextlib.contextmanager
    def using(self, budget: int | None) -> Iterator[CacheHandle]:
        """``with handle.using(budget=8): pipe(...)``: the budget inside the block, the previous one after."""
        before = self.budget
        self.budget = budget
        try:
            yield self
        finally:
            self.run.generating, self.run.owner = False, None  # a block left by an exception ends its generation
            self.budget = before

    def reset(self) -> None:
        """End the current generation and clear every cache: after an exception left a generation midway
        (the next pipeline call in the same thread does it too)."""
        self.run.reset()

    def select(self, num_steps: int, sigmas: list[float] | None = None) -> CachePlan:
        """The plan a generation of ``num_steps`` runs, for its schedule ``sigmas`` where given (a plan set may hold
        plans for several sizes); refused, listing what the set holds, if none fits."""
        if self.plans is None:
            plan = self._plan()
            plan.check_steps(num_steps)
            return plan
        plan = self.plans.select(num_steps, self.run.budget, sigmas)
        for hook in self.hooks:
            hook.use(plan)
        self.plan = plan
        return plan

    def summary(self) -> dict[str, dict[str, int]]:
        """Computed and reused steps of the last generation, per CFG branch (and per expert). A generation
        that did not reach its last step (an exception, ``pipe._interrupt``) is reported as far as it
        ran, each branch marked ``"interrupted": True``."""
        return {b: {**c, **({} if b in self.run.done else {"interrupted": True})} for b, c in self.run.counts.items()}

    def remove(self) -> None:
        """Take the plan off: every hook removed, the scheduler's ``set_timesteps`` restored, the caches dropped; the
        pipeline then generates exactly as before :func:`apply` (a feature that wrapped the plan later keeps its own
        wrapper, the plan's layer passing calls through)."""
        for module in self.experts.values():
            model = _unwrapped(module)
            registry = vars(module).get("_diffusers_hook")
            if registry is not None and registry.get_hook(_HOOK) is not None:
                hook = registry.get_hook(_HOOK)
                current = vars(module).get("forward")
                registry.remove_hook(_HOOK, recurse=False)
                hook.removed = True
                if current is not hook.installed and current is not None:  # a feature wrapped it after apply
                    vars(module)["forward"] = current  # (accelerate's offloading): keep the feature
                if hook.stack is not None:
                    residual.uninstall(model)
            if model is not module:
                HookRegistry.check_if_exists_or_initialize(model).remove_hook(_CONTEXT, recurse=False)
            vars(module).pop("_budcache_handle", None)
        if self.scheduler is not None:
            restore(self.scheduler, "set_timesteps")

    def check_hooked(self) -> None:
        """The plan's hooks are still in the forward of the transformer(s) and of every hooked block: a feature
        that re-installs its own hooks after the plan was applied can drop them, and the plan would not run."""
        for (name, module), hook in zip(self.experts.items(), self.hooks):
            blocks = hook.stack.blocks if hook.stack is not None else []
            if not reaches(module.forward, hook.installed) or not all(
                reaches(b.forward, vars(b)["_budcache_stack"].installed) for b in blocks if "_budcache_stack" in vars(b)
            ):
                raise StateError(
                    f"pipe.{name}: the plan's hooks are no longer in its forward (a feature re-installed "
                    "its own hooks after budcache.apply: model CPU offload does after every call, group "
                    "offloading with CUDA streams on its first, unloading LoRA under group offloading); "
                    "remove the plan (handle.remove()) and apply it again after that"
                )

    def __enter__(self) -> CacheHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def reaches(forward: Callable, target: Callable, depth: int = 64) -> bool:
    """``forward`` is ``target`` or wraps it (through ``__wrapped__``: diffusers' hook registry and accelerate's
    hooks wrap the forward they replace)."""
    at: Callable | None = forward
    for _ in range(depth):
        if at is target:
            return True
        at = getattr(at, "__wrapped__", None)
        if at is None:
            return False
    return False


def _host_sigmas(scheduler: Any, call: inspect.BoundArguments) -> list[float]:
    """The sigmas ``scheduler.set_timesteps(*call.args, **call.kwargs)`` gave, as Python floats read
    without a host-device synchronisation: from the scheduler where they live on the CPU, else from
    a copy of it that sets the same timesteps on the CPU."""
    if scheduler.sigmas.device.type == "cpu" or "device" not in call.signature.parameters:
        return scheduler.sigmas.tolist()
    twin = copy.deepcopy(scheduler)  # the copy has the class's own set_timesteps (see override)
    call.arguments["device"] = "cpu"
    twin.set_timesteps(*call.args, **call.kwargs)
    return twin.sigmas.tolist()


def _wrap_set_timesteps(scheduler: Any, handle: CacheHandle, run: _Run, time: Any, pipe: Callable[[], Any]) -> None:
    """Per instance: refuse a call from a second thread while one generates, pick the plan (a plan
    set's by step count and budget; one plan refuses another step count), refuse a schedule other than
    the one the plan was searched on, start a new generation, keep the sigmas on the host, and (for a
    plan with ``sigmas``) make the schedule exactly the plan's, its timesteps by the family's ``time``
    rule (of its ``model_sigmas`` where it has them); when the scheduler's own schedule already equals
    them, its timesteps are kept as they are."""
    original = scheduler.set_timesteps

    def set_timesteps(*args, **kwargs):
        call = inspect.signature(original).bind(*args, **kwargs)
        bound = call.arguments
        asked = next(
            (len(bound[n]) for n in ("sigmas", "timesteps") if bound.get(n) is not None),
            bound.get("num_inference_steps"),
        )
        if run.generating and run.owner != threading.get_ident():
            raise StateError(_OTHER_THREAD)
        if asked is None:
            raise PlanError("budcache: set_timesteps was called without a step count; cannot pick the plan")
        replaced = next(
            (n for n, m in experts(pipe()).items() if handle.experts.get(n) not in (m, getattr(m, "_orig_mod", None))),
            None,
        )
        if replaced is not None:
            raise StateError(
                f"pipe.{replaced} was replaced after budcache.apply, so the plan would not run on it; "
                "remove the plan (handle.remove()), then budcache.apply(pipe, plan)"
            )
        plan = handle.select(int(asked))  # a step count or budget the plan (set) lacks: refused before the scheduler
        handle.check_hooked()
        run.start()
        result = original(*args, **kwargs)
        sigmas = _host_sigmas(scheduler, call)
        if handle.plans is not None:
            plan = handle.select(int(asked), sigmas)  # the set's plan for this call's schedule (its size)
        b = plan.begin_index  # an image-to-image plan covers the steps from b on
        factor = plan.check_schedule(sigmas[b:])  # the call's shift from the plan's schedule (another size)
        run.generating, run.owner = True, threading.get_ident()
        if plan.sigmas is not None:
            mine, told = plan.sigmas_at(factor), plan.model_sigmas_at(factor)  # told: the timesteps the model sees
            if (
                told is not None
                or len(sigmas) - b != len(mine)
                or any(abs(x - y) > 1e-6 for x, y in zip(sigmas[b:], mine))
            ):
                device = scheduler.sigmas.device
                want = torch.tensor(sigmas[:b] + mine, dtype=torch.float32, device=device)
                scheduler.sigmas = want
                at = want[:-1] if told is None else torch.tensor(sigmas[:b] + told, dtype=torch.float32, device=device)
                scheduler.timesteps = time(at, scheduler.config, bound).to(torch.float32)
            sigmas = sigmas[:b] + mine
        run.sigmas = sigmas
        return result

    override(scheduler, "set_timesteps", functools.wraps(original)(set_timesteps))


def _check_boundary(pipe: Any, plan: CachePlan | PlanSet) -> None:
    config = getattr(pipe, "config", {})
    boundary = config.get("boundary_ratio") if getattr(pipe, "transformer_2", None) is not None else None
    if boundary != plan.boundary_ratio:
        raise PlanError(
            f"this plan was searched with expert boundary_ratio={plan.boundary_ratio}, the pipeline has "
            f"{boundary}; search a plan for this set-up"
        )


def _unwrapped(module: torch.nn.Module) -> torch.nn.Module:
    """The transformer itself, also when ``torch.compile`` wrapped it (an ``OptimizedModule``)."""
    return getattr(module, "_orig_mod", module)


def _check_compiled(modules: dict[str, torch.nn.Module]) -> None:
    for module in modules.values():
        if getattr(_unwrapped(module), "_compiled_call_impl", None) is not None:
            raise StateError(
                f"budcache: this {type(_unwrapped(module)).__name__} was compiled whole in place (module.compile()), "
                "where the plan cannot run outside the compiled region; compile its blocks instead "
                "(pipe.transformer.compile_repeated_blocks(...)), or wrap it before applying the plan: "
                "pipe.transformer = torch.compile(pipe.transformer, ...); budcache.apply(pipe, plan)"
            )


def apply(
    pipe: Any, plan: CachePlan | PlanSet | str | Path, *, budget: int | None = None, **hub_kwargs: Any
) -> CacheHandle:
    """Install ``plan`` on ``pipe``'s transformer(s) (or on a transformer passed directly).

    ``plan``: a :class:`CachePlan`; a :class:`PlanSet` (each generation runs the plan for its
    ``num_inference_steps`` and the handle's ``budget``, initially ``budget``); or a plan (set) file, a
    folder or a Hugging Face Hub repo id holding ``budcache_plan.json`` (``hub_kwargs``: ``filename``,
    ``revision``, ``cache_dir``, ``local_files_only``, ... for ``hf_hub_download``).

    A transformer wrapped by ``torch.compile`` gets the plan hook on the wrapper, outside the compiled
    region, and the block-stack hooks inside it; regionally compiled blocks work in either order."""
    check_pipeline(pipe, transformer_alone=True)
    plan = resolve(plan, **hub_kwargs)
    modules = experts(pipe) or {"transformer": pipe}
    check_no_other_cache(pipe, modules)
    scheduler = getattr(pipe, "scheduler", None)
    plans: PlanSet | None
    single: CachePlan | None  # the handle's one plan
    if isinstance(plan, PlanSet):
        plans, single, first = plan, None, plan.plans[0]  # the hooks follow the first until a generation picks
    else:
        plans, single, first = None, plan, plan
    if plans is not None and not hasattr(scheduler, "set_timesteps"):
        raise PlanError(
            "a plan set is picked per call by the pipeline's step count; a transformer without a "
            "scheduler takes one plan (plan_set.select(num_steps, budget))"
        )
    plan.check_model(_unwrapped(modules["transformer"]))
    if scheduler is not None:
        _check_boundary(pipe, plan)
    _check_compiled(modules)
    run = _Run(len(modules))
    reuse = residual.reuse_for(_unwrapped(modules["transformer"]), plan.reuse)
    handle = CacheHandle(modules, run, scheduler, single, plans)
    if plans is not None:
        handle.budget = budget
    elif budget is not None:
        handle.budget = budget  # refused unless it is the plan's
    for name, module in modules.items():
        model = _unwrapped(module)
        stack = residual.install(model) if reuse == "residual" else None
        hook = _PlanHook(first, stack, scheduler, name, run, type(model))
        handle.hooks.append(hook)
        if model is not module:  # the pipeline sets its cache context on the wrapped module's hooks
            HookRegistry.check_if_exists_or_initialize(model).register_hook(_ContextHook(hook.contexts), _CONTEXT)
        # in the instance's own dict: a torch.compile wrapper forwards attribute writes to the wrapped module
        registry = vars(module).setdefault("_diffusers_hook", HookRegistry(module))
        registry.register_hook(hook, _HOOK)
        hook.installed = vars(module)["forward"]  # the registry's wrapper: what the module's forward must reach
        vars(module)["_budcache_handle"] = handle
    if scheduler is not None and hasattr(scheduler, "set_timesteps"):
        _wrap_set_timesteps(scheduler, handle, run, time_rule(pipe), weakref.ref(pipe))
    return handle


def _handle(pipe: Any) -> CacheHandle:
    check_pipeline(pipe, transformer_alone=True)
    handle = getattr(getattr(pipe, "transformer", pipe), "_budcache_handle", None)
    if handle is None:
        raise StateError("pipe: no budcache plan is applied to this pipeline; call budcache.apply(pipe, plan) first")
    return handle


def summary(pipe: Any) -> dict[str, dict[str, int]]:
    """Computed and reused steps per branch of the last generation of ``pipe`` (with a plan applied;
    see :meth:`CacheHandle.summary`)."""
    return _handle(pipe).summary()


def remove(pipe: Any) -> None:
    """Remove the plan applied to ``pipe`` (the same as ``handle.remove()``)."""
    _handle(pipe).remove()
