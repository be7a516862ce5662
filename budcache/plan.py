"""``CachePlan``: the static artifact that a search produces and inference applies."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from ._io import atomic_write_text
from .errors import PlanError
from .sampling.rules import MARKS, RULES
from .sampling.shift import TOLERANCE, describe, relative_shift, shift_sigmas

if TYPE_CHECKING:
    from typing import Self

SCHEMA_VERSION = 1
REUSE_MODES = ("residual", "output")
PLAN_FILENAME = "budcache_plan.json"  # in a folder or Hub repo: save_pretrained / from_pretrained


@dataclass
class SearchRecord:
    """How a plan was found. Losses are the search objective (mean distance to the teacher)."""

    objective: float
    metric: str = "mse"
    uniform_objective: float | None = None
    euler_objective: float | None = None
    teacher_steps: int | None = None
    repeat_objective: float | None = None
    validation_objective: float | None = None
    validation_repeat_objective: float | None = None
    evaluations: int = 0
    forwards: int = 0
    forwards_without_prefix_reuse: int = 0
    seed: int = 0
    calibration_size: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    solver: str | None = None  # the loop's step the plan was searched under (Euler, UniPCMultistep, ...)
    effort: str | None = None  # the named search effort (default, local, annealed, thorough, long) or custom
    cap: float | None = None  # forwards per calibration sample the search could spend, teacher included (None: no cap)
    spent: float | None = None  # forwards per calibration sample it charged against the cap
    reused_calls: int = 0  # reused steps called outside a trajectory (the teacher surrogate), summed over the
    # calibration samples; the cap charges each budcache.search.ledger.REUSED_CALL of a forward
    plain_objectives: dict[str, float] | None = None  # plain B-step sampling's loss per solver: the pipeline's own
    # (first, also euler_objective) and AB2 over the same sigmas
    verdict: str | None = None  # against plain B-step sampling with the same solver (euler_objective): "cached" (the
    # cached plan is better than every plain solver scored), "plain" (plain is at least as good: the plan is the plain
    # B-step schedule), "plain, not applied" (plain is at least as good, but the cached plan was kept: comparisons,
    # image-to-image), or "cached, AB2 better" (the plan beats the own solver, not plain AB2, which the pipeline's
    # scheduler does not run)
    cached_objective: float | None = None  # the best cached plan's loss, where the plan fell back to plain sampling
    rules_tried: dict[str, float] | None = None  # where the search chose the reuse rule: each rule's best loss on
    # every sample (a rule ranked only on a share of the samples is missing)
    sizes: list[str] | None = None  # the sizes (HxW, HxWxF) calibrated, where there were several
    size_objectives: dict[str, float] | None = None  # the plan's loss at each of them (single-process searches)


def check_object(d: Any, source: str) -> None:
    """A plan's (or plan set's) JSON is an object of this budcache's schema version, or a PlanError."""
    if not isinstance(d, dict):
        raise PlanError(f"{source}: expected a JSON object, got {type(d).__name__}")
    version = d.get("schema_version")
    if version != SCHEMA_VERSION:
        raise PlanError(
            f"{source}: field 'schema_version' is {version!r}; this budcache reads version {SCHEMA_VERSION}"
        )


class JsonFile:
    """Saving and loading shared by plans and plan sets: JSON written atomically, read back through
    ``from_dict`` (every failure a :class:`PlanError`), and the Hugging Face Hub layout."""

    KIND = "plan file"

    if TYPE_CHECKING:  # what each kind of file defines (CachePlan, PlanSet)

        def to_dict(self) -> dict: ...

        @classmethod
        def from_dict(cls, d: Any, source: str = ...) -> Self: ...

    def save(self, path: str | Path) -> Path:
        """Write as JSON, atomically (a crash never leaves a half-written file; the folder is created)."""
        if Path(path).is_dir():
            raise PlanError(f"path: {path} is a folder; give a file name (or save_pretrained({str(path)!r}))")
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Self:
        path = Path(path)
        return cls.from_dict(read_json(path, cls.KIND), source=str(path))

    def save_pretrained(self, folder: str | Path, filename: str = PLAN_FILENAME) -> Path:
        """Write into ``folder`` as ``filename``: the layout of a Hugging Face Hub repo, to upload as it
        is (``huggingface_hub.upload_folder``) and read back with :meth:`from_pretrained`."""
        return self.save(Path(folder) / filename)

    @classmethod
    def from_pretrained(cls, folder_or_hub_id: str | Path, filename: str = PLAN_FILENAME, **hub_kwargs: Any) -> Self:
        """Load from a local folder or a Hub repo id (``org/plans``; ``hub_kwargs`` go to
        ``huggingface_hub.hf_hub_download``: ``revision``, ``cache_dir``, ``local_files_only``, ...)."""
        return cls.load(pretrained_file(folder_or_hub_id, filename, **hub_kwargs))


@dataclass
class CachePlan(JsonFile):
    """Of ``num_steps`` denoising steps exactly ``budget`` run the transformer (``mask[k] == 1``).

    ``sigmas`` holds K+1 strictly decreasing values ending in 0, or None for the pipeline's
    default schedule. Reused steps read the cache by ``rule`` (``repeat`` or ``extrapolate`` /
    ``extrapolate2`` in sigma), or by ``rules[k]`` per step when given. ``model`` names what
    the plan was searched for (``class`` and a config ``fingerprint``); ``boundary_ratio`` the
    expert boundary of a two-expert pipeline (Wan2.2), whose first low-noise step computes.
    ``schedule``: the K+1 sigmas the pipeline itself set when the plan was searched (its shift, or
    ``mu`` from the resolution); inside a pipeline a call whose own schedule differs is refused.
    ``begin_index``: the step an image-to-image (or inpainting) call starts at (``strength`` < 1 skips
    the first ``begin_index`` of ``num_inference_steps = begin_index + num_steps``); the mask, ``sigmas``
    and ``schedule`` cover the steps that run. A call that starts elsewhere is refused.
    ``model_sigmas``: K noise levels the transformer is told at each step instead of the step's own sigma
    (LD3's decoupled model times, learned by ``align``; the family's time rule turns them into timesteps);
    they need ``sigmas`` and are refused for two-expert pipelines, whose timesteps pick the expert.
    ``shifts``: ``[low, high]``, the time shifts of ``schedule`` the plan was searched over (a calibration of several
    sizes; see :mod:`budcache.sampling.shift`): a call whose schedule is ``schedule`` shifted by a factor in the range
    runs the mask by step index, ``sigmas`` and ``model_sigmas`` shifted by the same factor; None: ``schedule`` only.
    """

    num_steps: int
    budget: int
    mask: list[int]
    reuse: str = "residual"
    rule: str = "repeat"
    rules: list[str] | None = None
    sigmas: list[float] | None = None
    model: dict[str, str] = field(default_factory=dict)
    boundary_ratio: float | None = None
    record: SearchRecord | None = None
    schedule: list[float] | None = None
    begin_index: int = 0
    model_sigmas: list[float] | None = None
    shifts: list[float] | None = None

    def __post_init__(self) -> None:
        self.mask = [int(m) for m in self.mask]
        if self.sigmas is not None:
            self.sigmas = [float(s) for s in self.sigmas]
        if self.model_sigmas is not None:
            self.model_sigmas = [float(s) for s in self.model_sigmas]
        if self.schedule is not None:
            self.schedule = [float(s) for s in self.schedule]
        if self.shifts is not None:
            self.shifts = [float(s) for s in self.shifts]
        self.validate()

    # -- validation -------------------------------------------------------------------------
    def validate(self) -> None:
        """Check every field (types, ranges, the mask against the budget, sigmas, shifts); a :class:`PlanError`
        naming the field otherwise. Run on construction and on loading."""
        k, b, m = self.num_steps, self.budget, self.mask
        if not isinstance(k, int) or k < 1:
            raise PlanError(f"field 'num_steps' must be a positive integer, got {k!r}")
        if not isinstance(b, int) or not 1 <= b <= k:
            raise PlanError(f"field 'budget' must be an integer in [1, num_steps={k}], got {b!r}")
        if len(m) != k:
            raise PlanError(f"field 'mask' must have num_steps={k} entries, got {len(m)}")
        if any(v not in (0, 1) for v in m):
            raise PlanError("field 'mask' must contain only 0 and 1")
        if m[0] != 1:
            raise PlanError("field 'mask' must start with 1: the first step always computes")
        if sum(m) != b:
            raise PlanError(f"field 'mask' has {sum(m)} computed steps but 'budget' is {b}")
        if self.reuse not in REUSE_MODES:
            raise PlanError(f"field 'reuse' must be one of {REUSE_MODES}, got {self.reuse!r}")
        if self.rule not in RULES:
            raise PlanError(f"field 'rule' must be one of {RULES}, got {self.rule!r}")
        if self.rules is not None:
            if not isinstance(self.rules, list) or len(self.rules) != k:
                raise PlanError(f"field 'rules' must be null or a list of num_steps={k} rules")
            bad = sorted(set(self.rules) - set(RULES))
            if bad:
                raise PlanError(f"field 'rules' holds unknown rule(s) {bad}; choose from {RULES}")
        if self.sigmas is not None:
            check_sigmas(self.sigmas, k, "field 'sigmas'")
        if self.schedule is not None:
            check_sigmas(self.schedule, k, "field 'schedule'")
        if self.model_sigmas is not None:
            self._check_model_sigmas(self.model_sigmas)
        if self.shifts is not None:
            s = self.shifts
            if not (len(s) == 2 and 0 < s[0] <= 1 + TOLERANCE and 1 - TOLERANCE <= s[1] < math.inf):
                raise PlanError(
                    f"field 'shifts' must be null or [low, high] with 0 < low <= 1 <= high, got {self.shifts!r}"
                )
            if self.schedule is None:
                raise PlanError("field 'shifts' needs field 'schedule' (the schedule they shift)")
        if not isinstance(self.begin_index, int) or isinstance(self.begin_index, bool) or self.begin_index < 0:
            raise PlanError(f"field 'begin_index' must be a non-negative integer, got {self.begin_index!r}")
        if self.boundary_ratio is not None and not (
            isinstance(self.boundary_ratio, (int, float)) and 0 < self.boundary_ratio < 1
        ):
            raise PlanError(f"field 'boundary_ratio' must be null or in (0, 1), got {self.boundary_ratio!r}")

    def _check_model_sigmas(self, m: list[float]) -> None:
        k = self.num_steps
        if self.sigmas is None:
            raise PlanError("field 'model_sigmas' needs field 'sigmas' (the steps they are told apart from)")
        if len(m) != k or not all(math.isfinite(s) and s > 0 for s in m):
            raise PlanError(f"field 'model_sigmas' must hold num_steps={k} finite positive values")
        if self.boundary_ratio is not None:
            raise PlanError(
                "field 'model_sigmas' cannot be used with two experts (boundary_ratio): the timesteps "
                "pick the expert; align without decoupled times"
            )

    # -- derived ----------------------------------------------------------------------------
    @property
    def strip(self) -> str:
        """The mask as a strip: ``#`` computes, ``.`` reuses."""
        return "".join("#" if v else "." for v in self.mask)

    @property
    def step_rules(self) -> list[str]:
        """The reuse rule of every step (``rules`` if given, else ``rule`` everywhere)."""
        return list(self.rules) if self.rules is not None else [self.rule] * self.num_steps

    @property
    def ideal_speedup(self) -> float:
        """K / B: the speedup if reuse steps cost nothing."""
        return self.num_steps / self.budget

    def check_model(self, model: Any) -> None:
        """Refuse a model of another class or config than the plan was searched for."""
        if not self.model:
            return
        want, got = self.model, model_identity(model)
        if want.get("class") != got["class"]:
            raise PlanError(
                f"this plan was searched for a {want.get('class')}, not a {got['class']}; search a plan for this model"
            )
        if want.get("fingerprint") != got["fingerprint"]:
            raise PlanError(
                f"this plan was searched for a {got['class']} with another config "
                f"(fingerprint {want.get('fingerprint')} != {got['fingerprint']}); "
                "search a plan for this model"
            )
        if want.get("adapters", "") != got.get("adapters", ""):

            def shown(a: str) -> str:
                return f"LoRA adapters {a}" if a else "no LoRA adapter"

            warnings.warn(
                f"budcache: this plan was searched with {shown(want.get('adapters', ''))}, the transformer has "
                f"{shown(got.get('adapters', ''))}; the steps worth computing may differ: search a plan with the "
                "adapters you serve",
                UserWarning,
                stacklevel=3,
            )

    def shift_of(self, sigmas: list[float]) -> float | None:
        """The factor the call's schedule (``sigmas``, K+1 values) shifts the plan's ``schedule`` by, where the plan
        covers it (1.0: the same schedule, or a plan without one); None where it does not."""
        if self.schedule is None:
            return 1.0
        factor = relative_shift(sigmas, self.schedule)  # exactly 1.0 for the plan's own schedule (within 1e-5)
        if factor == 1.0:
            return factor
        if factor is None or self.shifts is None:
            return None
        low, high = self.shifts
        return factor if low * (1 - TOLERANCE) <= factor <= high * (1 + TOLERANCE) else None

    def check_schedule(self, sigmas: list[float]) -> float:
        """The shift factor of a call's own sigma schedule (``sigmas``, K+1 values) from the plan's ``schedule``;
        refused where the plan was not searched for it (another resolution, shift or ``mu`` than it covers)."""
        factor = self.shift_of(sigmas)
        if factor is not None:
            return factor
        raise PlanError(self._schedule_message(sigmas))

    def _schedule_message(self, sigmas: list[float]) -> str:
        schedule = self.schedule
        assert schedule is not None  # shift_of refuses no call of a plan without a schedule
        factor = relative_shift(sigmas, schedule)
        sizes = self.record.sizes if self.record is not None and self.record.sizes else None
        shifts = f"schedule shifts {describe(*self.shifts)}" if self.shifts else "one schedule"
        covers = (
            f"searched on sizes {', '.join(sizes)} ({shifts})"
            if sizes
            else f"searched for {shifts}"
            if self.shifts
            else "searched on one schedule (one resolution)"
        )
        if factor is None:
            at = next((i for i, (a, b) in enumerate(zip(sigmas, schedule)) if abs(a - b) > 1e-5), 0)
            got = (
                f"this call's schedule is not a shift of the plan's (sigma[{at}] {schedule[at]:.4f} != "
                f"{sigmas[at]:.4f}: another scheduler setting)"
            )
        else:
            got = f"this call's schedule is the plan's shifted x{factor:.4g} (another resolution, shift or mu)"
        return (
            f"this plan was {covers}; {got}: calibrate with this size among the sizes (budcache.calibrate(pipe, "
            "prompts, steps, sizes=[(height, width), ...])) and search again, or serve it from a plan set holding "
            "a plan searched at this size"
        )

    def sigmas_at(self, factor: float) -> list[float] | None:
        """The plan's ``sigmas`` for a call whose schedule is the plan's ``schedule`` shifted by ``factor``."""
        return None if self.sigmas is None else shift_sigmas(self.sigmas, factor)

    def model_sigmas_at(self, factor: float) -> list[float] | None:
        """The plan's ``model_sigmas`` for a call shifted by ``factor`` (see :meth:`sigmas_at`)."""
        return None if self.model_sigmas is None else shift_sigmas(self.model_sigmas, factor)

    @property
    def total_steps(self) -> int:
        """The ``num_inference_steps`` of the calls the plan is for (``begin_index + num_steps``)."""
        return self.begin_index + self.num_steps

    def check_begin(self, begin: int) -> None:
        """Refuse a call that starts at another step (image-to-image ``strength``) than the plan's."""
        if begin == self.begin_index:
            return

        def what(b: int) -> str:
            return "a text-to-image call (from step 0)" if b == 0 else f"an image-to-image call starting at step {b}"

        raise PlanError(
            f"this plan was searched for {what(self.begin_index)} of {self.total_steps} steps; this is {what(begin)}: "
            "the mask would fall on other steps. Calibrate with the image and strength you will use "
            "(budcache.calibrate(pipe, prompts, K, image=..., strength=...)) and search a plan for them"
        )

    def check_steps(self, num_steps: int) -> None:
        """Refuse a call of another ``num_inference_steps`` than the plan's (an image-to-image plan's total)."""
        if self.begin_index:
            if num_steps != self.total_steps:
                raise PlanError(
                    f"this plan was searched for {self.total_steps} steps (an image-to-image call running the last "
                    f"{self.num_steps}), the call asks for {num_steps}; use num_inference_steps={self.total_steps}"
                )
            return
        if num_steps != self.num_steps:
            raise PlanError(
                f"this plan was searched for {self.num_steps} steps, the call asks for {num_steps}; "
                f"use num_inference_steps={self.num_steps} or search a plan for {num_steps} steps"
            )

    def describe(self) -> str:
        """A few lines for people: the mask, the budget, the schedule, the model and the search record."""
        lines = [f"mask    {self.strip}"]
        if self.rules is not None:
            lines.append(
                "rules   "
                + "".join("#" if m else MARKS[r] for m, r in zip(self.mask, self.rules))
                + "   ("
                + ", ".join(f"{m} {r}" for r, m in MARKS.items())
                + ")"
            )
        lines += [
            f"budget  {self.budget}/{self.num_steps} steps compute ({self.reuse} reuse, "
            f"rule {self.rule if self.rules is None else 'per step'}), ideal speedup {self.ideal_speedup:.2f}x",
            f"sigmas  {'pipeline default' if self.sigmas is None else 'custom, ' + str(len(self.sigmas)) + ' values'}"
            + (
                ""
                if self.schedule is None
                else f" (searched on the pipeline schedule {self.schedule[0]:.4f} .. "
                f"{self.schedule[-2]:.4f}, "
                + (
                    "refused on another)"
                    if self.shifts is None
                    else f"and its shifts {describe(*self.shifts)}; refused beyond)"
                )
            ),
        ]
        if self.record is not None and self.record.sizes:
            losses = self.record.size_objectives or {}
            shown = [f"{s} (loss {losses[s]:.4g})" if s in losses else s for s in self.record.sizes]
            lines.append(f"sizes   {', '.join(shown)}: calibrated together")
        if self.model_sigmas is not None:
            lines.append("times   decoupled: the transformer is told its own noise level at each step (model_sigmas)")
        if self.begin_index:
            lines.append(
                f"start   image-to-image: steps {self.begin_index}..{self.total_steps - 1} of "
                f"num_inference_steps={self.total_steps}"
            )
        if self.model:
            lines.append(f"model   {self.model.get('class')} ({self.model.get('fingerprint')})")
        r = self.record
        if r is not None:
            refs = [
                f"searched {r.objective:.4g}"
                if r.cached_objective is None
                else f"this plain plan {r.objective:.4g}, best cached plan {r.cached_objective:.4g}"
            ]
            if r.uniform_objective is not None:
                refs.append(f"uniform mask {r.uniform_objective:.4g}")
            if r.euler_objective is not None and r.cached_objective is None:
                plains = r.plain_objectives or {r.solver or "Euler": r.euler_objective}
                refs += [f"plain {self.budget}-step {name} {loss:.4g}" for name, loss in plains.items()]
            if r.repeat_objective is not None and (self.rule != "repeat" or self.rules is not None):
                refs.append(f"same mask with repeat {r.repeat_objective:.4g}")
            lines += [
                f"loss    {r.metric} vs the {r.teacher_steps}-step teacher"
                + (f" ({r.solver})" if r.solver else "")
                + ": "
                + ", ".join(refs),
                f"search  {r.evaluations} masks, {r.forwards} transformer forwards "
                f"({r.forwards_without_prefix_reuse} without prefix reuse), {r.calibration_size} calibration "
                f"samples, seed {r.seed}, {r.seconds:.1f}s"
                + (f", effort {r.effort}" if r.effort else "")
                + (
                    f", {r.spent:g} of at most {r.cap:g} forwards per sample"
                    if r.cap is not None and r.spent is not None
                    else ""
                )
                + (f" ({r.reused_calls} reused calls for the teacher surrogate among them)" if r.reused_calls else "")
                + (", interrupted" if r.interrupted else ""),
            ]
            if r.rules_tried is not None:
                lines.append(
                    "rules   chosen among: "
                    + ", ".join(f"{rule} {loss:.4g}" for rule, loss in r.rules_tried.items())
                    + " (best loss on every sample)"
                )
            if r.verdict is not None:
                lines.append("verdict " + self._verdict(r))
        return "\n".join(lines)

    def _verdict(self, r: SearchRecord) -> str:
        plain = f"plain {self.budget}-step {r.solver or 'Euler'}"
        verdict = r.verdict
        assert verdict is not None  # describe() asks only for a record's verdict
        # a search records its plain losses (euler_objective, plain_objectives) with every verdict
        plains = r.plain_objectives or {r.solver or "Euler": cast(float, r.euler_objective)}
        if verdict == "cached":
            best, loss = min(plains.items(), key=lambda x: x[1])
            ratio = loss / r.objective if r.objective > 0 else math.inf
            return (
                f"caching beats every plain {self.budget}-step solver scored on the calibration set: {ratio:.3g}x "
                f"lower loss than the best, {best} ({r.objective:.4g} vs {loss:.4g})"
            )
        if verdict.startswith("cached, "):
            name = verdict.removeprefix("cached, ").removesuffix(" better")
            return (
                f"plain {self.budget}-step {name} beats this plan ({cast(dict, r.plain_objectives)[name]:.4g} vs "
                f"{r.objective:.4g}), which beats {plain} ({r.euler_objective:.4g}); the pipeline's scheduler does "
                f"not run {name}"
            )
        cached = r.objective if r.cached_objective is None else r.cached_objective
        kept = (
            f"this plan runs {self.budget} plain steps (num_inference_steps={self.budget})"
            if verdict == "plain"
            else "the cached plan was kept; fewer steps are as good"
        )
        return f"{plain} is at least as good as caching ({r.euler_objective:.4g} vs {cached:.4g}): {kept}"

    # -- io ---------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The plan as the JSON object :meth:`save` writes (with ``schema_version``)."""
        d = dataclasses.asdict(self)
        return {"schema_version": SCHEMA_VERSION, **d}

    @classmethod
    def from_dict(cls, d: Any, source: str = "plan") -> CachePlan:
        """A plan from its JSON object; any defect (missing, unknown or mistyped field, invalid value)
        is a :class:`PlanError` naming the field."""
        check_object(d, source)
        unknown = set(d) - set(_field_types(cls)) - {"schema_version"}
        if unknown:
            raise PlanError(f"{source}: unknown field(s) {sorted(unknown)}")
        for name in ("num_steps", "budget", "mask"):
            if name not in d:
                raise PlanError(f"{source}: missing field '{name}'")
        if not isinstance(d["mask"], list):
            raise PlanError(f"{source}: field 'mask' must be a list of 0/1")
        _check_types(d, cls, source, skip="record")
        record = d.get("record")
        if record is not None:
            if not isinstance(record, dict):
                raise PlanError(f"{source}: field 'record' must be an object or null")
            _check_types(record, SearchRecord, f"{source}: field 'record'")
            try:
                record = SearchRecord(**record)
            except TypeError as e:
                raise PlanError(f"{source}: field 'record' is malformed ({e})") from None
        try:
            return cls(**{**{k: v for k, v in d.items() if k != "schema_version"}, "record": record})
        except PlanError as e:
            raise PlanError(f"{source}: {e}") from None


def read_json(path: Path, what: str = "plan file") -> Any:
    """The JSON content of a plan (or plan set) file; any failure is a PlanError."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise PlanError(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise PlanError(f"{path} is a folder; name a {what} (.json) in it") from None
    except OSError as e:
        raise PlanError(f"{path}: cannot read the {what} ({e.strerror or e})") from None
    except (ValueError, RecursionError) as e:  # JSON and UTF-8 decoding errors are ValueErrors
        raise PlanError(f"{path}: not a valid JSON {what} ({e})") from None


def pretrained_file(folder_or_hub_id: str | Path, filename: str = PLAN_FILENAME, **hub_kwargs: Any) -> Path:
    """``filename`` in a local folder, else in the Hugging Face Hub repo ``folder_or_hub_id`` (downloaded,
    or from the local Hub cache; offline with ``local_files_only=True`` or ``HF_HUB_OFFLINE=1``)."""
    folder = Path(folder_or_hub_id)
    if folder.is_dir():
        return folder / filename
    name = str(folder_or_hub_id)
    if name.count("/") != 1 or folder.suffix == ".json" or name.startswith((".", "/")):
        raise PlanError(f"{name}: no such folder, and not a Hub repo id (org/name)")
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:  # pragma: no cover - a dependency of diffusers
        raise PlanError(f"{name}: no such folder; reading a Hub repo needs huggingface_hub") from None
    try:
        return Path(hf_hub_download(name, filename, **hub_kwargs))
    except Exception as e:  # offline, unknown repo or file, bad revision: one line that says which
        raise PlanError(
            f"{name}: cannot get {filename} from the Hugging Face Hub ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else e!r})"
        ) from None


def _field_types(cls: type) -> dict[str, Any]:
    """The resolved type hints of a dataclass's fields."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _matches(value: Any, hint: Any) -> bool:
    """Whether a JSON value has the type ``hint`` (int for float allowed, bool for neither)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, h) for h in args)
    if origin is list:
        return isinstance(value, list) and all(_matches(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(_matches(k, args[0]) and _matches(v, args[1]) for k, v in value.items())
    if hint is type(None):
        return value is None
    if hint in (int, float):
        return isinstance(value, (int, float) if hint is float else int) and not isinstance(value, bool)
    return isinstance(hint, type) and isinstance(value, hint)


def _check_types(d: dict, cls: type, source: str, skip: str = "") -> None:
    for name, hint in _field_types(cls).items():
        if name in d and name != skip and not _matches(d[name], hint):
            shown = repr(d[name])
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            what = "a list of 0/1" if name == "mask" else getattr(hint, "__name__", None) or str(hint)
            raise PlanError(f"{source}: field '{name}' must be {what}, got {shown}")


def check_sigmas(sigmas: list[float], num_steps: int, what: str = "sigmas") -> None:
    """K+1 finite values, strictly decreasing, the last one 0."""
    if len(sigmas) != num_steps + 1:
        raise PlanError(f"{what} must have num_steps + 1 = {num_steps + 1} values, got {len(sigmas)}")
    if not all(math.isfinite(s) for s in sigmas):
        raise PlanError(f"{what} must be finite numbers")
    if any(b >= a for a, b in zip(sigmas, sigmas[1:])):
        raise PlanError(f"{what} must be strictly decreasing")
    if sigmas[-1] != 0.0:
        raise PlanError(f"{what} must end with 0, got {sigmas[-1]}")


def model_identity(model: Any) -> dict[str, str]:
    """Class name and a fingerprint of the config (diffusers ``config``) or of the parameter shapes."""
    config = getattr(model, "config", None)
    if config is not None:
        payload = json.dumps(
            {k: v for k, v in dict(config).items() if not k.startswith("_")}, sort_keys=True, default=str
        )
    elif hasattr(model, "state_dict"):
        payload = json.dumps({k: list(v.shape) for k, v in model.state_dict().items()}, sort_keys=True)
    else:
        payload = repr(getattr(model, "identity", type(model).__name__))
    identity = {
        "class": type(model).__name__,
        "fingerprint": hashlib.sha256(payload.encode()).hexdigest()[:16],
    }
    lora = adapters(model)
    if lora:
        identity["adapters"] = lora
    return identity


def adapters(model: Any) -> str:
    """The active LoRA adapters of a transformer (diffusers' ``load_lora_adapter`` / ``set_adapters`` through
    peft) with their scales, as ``name=scale`` joined by ``,`` (sorted); "" without any. Read from the
    first peft layer: its ``active_adapters``, ``scaling`` (the scale set times alpha / r: divided back where
    the layer has ``lora_alpha`` and ``r``) and ``disable_adapters``; names without a scale there are listed bare."""
    if not getattr(model, "peft_config", None) or not hasattr(model, "modules"):
        return ""
    for module in model.modules():
        scaling = getattr(module, "scaling", None)
        active = getattr(module, "active_adapters", None)
        if isinstance(scaling, dict) and active is not None:
            if getattr(module, "disable_adapters", False):
                return ""
            alpha, rank = getattr(module, "lora_alpha", {}), getattr(module, "r", {})
            names = [active] if isinstance(active, str) else list(active)
            scales = {
                n: float(scaling[n]) * (rank[n] / alpha[n] if alpha.get(n) and n in rank else 1.0)
                for n in names
                if n in scaling
            }
            return ",".join(f"{n}={scales[n]:.4g}" if n in scales else str(n) for n in sorted(names))
    return ",".join(sorted(map(str, model.peft_config)))


def uniform_mask(num_steps: int, budget: int) -> list[int]:
    """B computed steps spread evenly over K, the first one included."""
    if not 1 <= budget <= num_steps:
        raise PlanError(f"budget must be in [1, num_steps={num_steps}], got {budget}")
    picks = {round(i * num_steps / budget) for i in range(budget)}
    return [1 if k in picks else 0 for k in range(num_steps)]
