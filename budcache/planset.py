"""``PlanSet``: plans of one model for several budgets and step counts, in one file.

Served with ``budcache.apply(pipe, plan_set)``: each call's ``num_inference_steps`` and the handle's
``budget`` (set between calls) pick the plan. The file is JSON, validated like a plan: any defect is a
:class:`PlanError` naming the plan and field.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import ArgumentTypeError, PlanError
from .plan import PLAN_FILENAME, SCHEMA_VERSION, CachePlan, JsonFile, check_object, pretrained_file, read_json
from .sampling.shift import TOLERANCE, describe, relative_shift

_SHARED = ("model", "reuse", "boundary_ratio", "begin_index")  # what every plan of a set has in common


class PlanSet(JsonFile):
    """Plans of one model (same ``model``, ``reuse``, ``boundary_ratio`` and ``begin_index``), at most one per
    (K, B); K is a call's ``num_inference_steps`` (``total_steps``)."""

    KIND = "plan set file"

    def __init__(self, plans: Iterable[CachePlan]):
        plans = list(plans)
        bad = next((p for p in plans if not isinstance(p, CachePlan)), None)
        if bad is not None:
            raise ArgumentTypeError(f"plans: a plan set holds CachePlan objects only, got {type(bad).__name__}")
        self.plans = sorted(plans, key=lambda p: (p.total_steps, p.budget))
        if not self.plans:
            raise PlanError("a plan set needs at least one plan")
        first = self.plans[0]
        for p in self.plans[1:]:
            for name in _SHARED:
                if getattr(p, name) != getattr(first, name):
                    raise PlanError(
                        f"the plans of a set must share field '{name}': K={p.num_steps} B={p.budget} has "
                        f"{getattr(p, name)!r}, K={first.num_steps} B={first.budget} {getattr(first, name)!r}"
                    )
        for i, p in enumerate(self.plans):
            for q in self.plans[i + 1 :]:
                if (p.total_steps, p.budget) == (q.total_steps, q.budget) and _overlap(p, q):
                    raise PlanError(
                        f"a plan set holds two plans for K={p.total_steps} steps and budget B={p.budget} "
                        "that cover the same schedule (size); plans for one K and B must be searched at "
                        "sizes whose schedules differ"
                    )

    # -- selection --------------------------------------------------------------------------
    @property
    def model(self) -> dict[str, str]:
        """The model every plan of the set was searched for (class and config fingerprint)."""
        return self.plans[0].model

    @property
    def reuse(self) -> str:
        """What the plans' reused steps take from the cache (``residual`` or ``output``)."""
        return self.plans[0].reuse

    @property
    def boundary_ratio(self) -> float | None:
        """The expert boundary of a two-expert pipeline the plans were searched with, else None."""
        return self.plans[0].boundary_ratio

    def holdings(self) -> str:
        """What the set holds, for messages: ``K=8: B=2, 3; K=12: B=4``."""
        by_k: dict[int, list[int]] = {}
        for p in self.plans:
            by_k.setdefault(p.total_steps, []).append(p.budget)
        return "; ".join(f"K={k}: B={', '.join(map(str, bs))}" for k, bs in by_k.items())

    def budgets(self, num_steps: int | None = None) -> list[int]:
        """The budgets held (for ``num_steps`` only where given), sorted."""
        return sorted({p.budget for p in self.plans if num_steps in (None, p.total_steps)})

    def select(self, num_steps: int, budget: int | None = None, sigmas: list[float] | None = None) -> CachePlan:
        """The plan for ``num_steps`` and ``budget`` (None: the only budget held for that step count) and, where the
        set holds plans for several sizes at that K and B, for a call whose schedule is ``sigmas`` (the steps the
        plans cover); without ``sigmas``, the first of them."""
        at_k = [p for p in self.plans if p.total_steps == num_steps]
        if not at_k:
            raise PlanError(f"this plan set holds no plan for {num_steps} steps; it holds {self.holdings()}")
        if budget is None:
            if len({p.budget for p in at_k}) > 1:
                raise PlanError(
                    f"choose a budget for {num_steps} steps (handle.budget = B); this plan set holds {self.holdings()}"
                )
            budget = at_k[0].budget
        plans = [p for p in at_k if p.budget == budget]
        if not plans:
            raise PlanError(
                f"this plan set holds no plan for {num_steps} steps at budget {budget}; it holds {self.holdings()}"
            )
        if sigmas is None or len(plans) == 1:
            return plans[0]
        tail = sigmas[plans[0].begin_index :]
        plan = next((p for p in plans if p.shift_of(tail) is not None), None)
        if plan is None:
            raise PlanError(
                f"none of the {len(plans)} plans for K={num_steps} B={budget} covers this call's schedule (size); "
                f"they serve {'; '.join(_covers(p) for p in plans)}: calibrate this size (budcache.calibrate(pipe, "
                "prompts, steps, height=..., width=...)), search a plan there and add it to the set"
            )
        return plan

    def check_model(self, model: Any) -> None:
        """Refuse a model of another class or config than the plans were searched for."""
        self.plans[0].check_model(model)

    # -- display ----------------------------------------------------------------------------
    def describe(self) -> str:
        """A table: K, B, the search objective (vs the uniform mask), the ideal speedup K/B, the mask."""
        rows = [("K", "B", "objective", "uniform", "speedup", "mask", "sizes")]
        for p in self.plans:
            r = p.record
            rows.append(
                (
                    str(p.num_steps),
                    str(p.budget),
                    "-" if r is None else f"{r.objective:.4g}",
                    "-" if r is None or r.uniform_objective is None else f"{r.uniform_objective:.4g}",
                    f"{p.ideal_speedup:.2f}x",
                    p.strip,
                    _covers(p),
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = [
            "  ".join(c.rjust(w) if i < 5 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
            for row in rows
        ]
        head = f"plan set: {len(self.plans)} plans ({self.reuse} reuse)"
        if self.model:
            head += f", model {self.model.get('class')} ({self.model.get('fingerprint')})"
        return "\n".join([head, *lines])

    # -- io ---------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The set as the JSON object :meth:`save` writes."""
        return {"schema_version": SCHEMA_VERSION, "plans": [p.to_dict() for p in self.plans]}

    @classmethod
    def from_dict(cls, d: Any, source: str = "plan set") -> PlanSet:
        check_object(d, source)
        unknown = set(d) - {"schema_version", "plans"}
        if unknown:
            raise PlanError(f"{source}: unknown field(s) {sorted(unknown)}")
        plans = d.get("plans")
        if not isinstance(plans, list) or not plans:
            raise PlanError(f"{source}: field 'plans' must be a non-empty list of plans")
        loaded = [CachePlan.from_dict(p, source=f"{source}: plans[{i}]") for i, p in enumerate(plans)]
        try:
            return cls(loaded)
        except PlanError as e:
            raise PlanError(f"{source}: {e}") from None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PlanSet) and self.plans == other.plans

    def __len__(self) -> int:
        return len(self.plans)

    def __iter__(self):
        return iter(self.plans)


def _covers(plan: CachePlan) -> str:
    """The schedules a plan serves, for tables: its sizes, its shift range, its one schedule, or any."""
    if plan.record is not None and plan.record.sizes:
        return ", ".join(plan.record.sizes)
    if plan.shifts is not None:
        return f"shifts {describe(*plan.shifts)}"
    return "any" if plan.schedule is None else f"one (sigma[1] {plan.schedule[1]:.4f})"


def _overlap(p: CachePlan, q: CachePlan) -> bool:
    """Two plans of one K and B would both serve some schedule: either has no recorded schedule, or their schedules
    are shifts of one another and their shift ranges meet."""
    if p.schedule is None or q.schedule is None:
        return True
    factor = relative_shift(q.schedule, p.schedule)  # q's schedule is p's shifted by factor
    if factor is None:
        return False
    low_p, high_p = p.shifts or (1.0, 1.0)
    low_q, high_q = q.shifts or (1.0, 1.0)
    return low_q * factor <= high_p * (1 + TOLERANCE) and low_p <= high_q * factor * (1 + TOLERANCE)


def load_plans(path: str | Path) -> CachePlan | PlanSet:
    """A plan or a plan set, whichever the file holds (a set has a field ``plans``)."""
    path = Path(path)
    data = read_json(path)
    if isinstance(data, dict) and "plans" in data:
        return PlanSet.from_dict(data, source=str(path))
    return CachePlan.from_dict(data, source=str(path))


def resolve(
    plan: CachePlan | PlanSet | str | Path, filename: str = PLAN_FILENAME, **hub_kwargs: Any
) -> CachePlan | PlanSet:
    """What ``budcache.apply`` accepts: a plan, a plan set, a plan (set) file, a folder holding
    ``filename``, or a Hugging Face Hub repo id."""
    if isinstance(plan, (CachePlan, PlanSet)):
        return plan
    if not isinstance(plan, (str, Path)):
        raise ArgumentTypeError(
            f"plan must be a CachePlan, a PlanSet, a file, a folder or a Hub id, got {type(plan).__name__}"
        )
    path = Path(plan)
    if path.is_file():
        return load_plans(path)
    return load_plans(pretrained_file(plan, filename, **hub_kwargs))
