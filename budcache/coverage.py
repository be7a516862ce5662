"""Which diffusers DiTs budcache covers, proven on each family's tiny random config.

``check(name)`` runs the family's real pipeline (offline, ``prompt_embeds``) and returns what it
measured: block-stack executions per branch under a plan, bit-identity of an all-ones plan and
after ``remove()``, whether the plan's sigmas reached the transformer, and whether
calibrate -> search -> apply reproduces the searched loss. The README's coverage table is
``table(check(n) for n in FAMILIES)`` (``python -m budcache.coverage`` rewrites it; a test
fails when it drifts).
"""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import tiny, tiny_families
from .apply import apply
from .capture import calibrate, input_names
from .plan import CachePlan, uniform_mask
from .replay import search
from .residual import block_lists, reuse_for
from .search import SearchConfig


def _from_family(key: str, **options: Any) -> Callable[[], tuple[Any, dict]]:
    def build():
        family = tiny_families.FAMILIES[key]
        kwargs = family.call_kwargs(seed=1, **options)
        return family.pipeline(), {k: v for k, v in kwargs.items() if k not in ("generator", "output_type")}
    return build


def _flux1():
    g = torch.Generator().manual_seed(1)
    return tiny.tiny_flux_pipeline(), dict(
        prompt_embeds=torch.randn(1, 8, 32, generator=g), pooled_prompt_embeds=torch.randn(1, 32, generator=g),
        negative_prompt_embeds=torch.randn(1, 8, 32, generator=g),
        negative_pooled_prompt_embeds=torch.randn(1, 32, generator=g), true_cfg_scale=3.0, height=16, width=16)


def _wan21():
    g = torch.Generator().manual_seed(1)
    return tiny.tiny_wan_pipeline(), dict(prompt_embeds=torch.randn(1, 8, 32, generator=g),
                                          negative_prompt_embeds=torch.randn(1, 8, 32, generator=g),
                                          height=16, width=16, num_frames=5, guidance_scale=4.0)


def _sd3():
    g = torch.Generator().manual_seed(1)
    return tiny.tiny_sd3_pipeline(), dict(
        prompt_embeds=torch.randn(1, 8, 32, generator=g), pooled_prompt_embeds=torch.randn(1, 64, generator=g),
        negative_prompt_embeds=torch.randn(1, 8, 32, generator=g),
        negative_pooled_prompt_embeds=torch.randn(1, 64, generator=g), guidance_scale=5.0, height=16, width=16)


FAMILIES: dict[str, Callable[[], tuple[Any, dict]]] = {
    "FLUX.1": _flux1,
    "FLUX.2": _from_family("flux2"),
    "FLUX.2 Klein": _from_family("flux2_klein"),
    "Wan2.1": _wan21,
    "Wan2.2 (two experts)": _from_family("wan22"),
    "SD3": _sd3,
    "Z-Image": _from_family("z_image"),
    "Qwen-Image": _from_family("qwen_image"),
    "Qwen-Image 2.1": _from_family("qwen_image21", cfg=True),
    "Chroma": _from_family("chroma"),
    "LTX-2": _from_family("ltx2"),
    "HunyuanVideo 1.5": _from_family("hunyuan_video15"),
    "CogView4": _from_family("cogview4"),
    "Sana": _from_family("sana"),
}


@dataclass
class Coverage:
    family: str
    pipeline: str
    transformer: str
    reuse: str
    segments: list[int]
    branches: dict[str, dict[str, int]]
    calls_per_step: int
    batched: bool
    executions: int
    all_ones_identical: bool
    removed_identical: bool
    sigmas_reach: bool
    budget: int
    steps: int
    search: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def exact_budget(self) -> bool:
        """Exactly B computed steps per branch (summed over experts), and one block-stack execution each."""
        per_branch: dict[str, int] = {}
        for key, counts in self.branches.items():
            per_branch[key.split("/")[-1]] = per_branch.get(key.split("/")[-1], 0) + counts["computed"]
        return (set(per_branch.values()) == {self.budget}
                and self.executions == sum(c["computed"] for c in self.branches.values()))


class Spy:
    """Counts head-block executions and records the timesteps each transformer call received."""

    def __init__(self, experts: dict[str, torch.nn.Module]):
        self.executions, self.timesteps, self.batches, self.handles = 0, [], [], []
        for module in experts.values():
            head = next(iter(block_lists(module)[0][0].children()), None) if block_lists(module) else None
            if head is not None:
                self.handles.append(head.register_forward_hook(self._count))
            self.handles.append(module.register_forward_pre_hook(self._record(module), with_kwargs=True))

    def _count(self, *_: Any) -> None:
        self.executions += 1

    def _record(self, module: torch.nn.Module):
        hidden, t = input_names(module)
        names = list(inspect.signature(type(module).forward).parameters)[1:]

        def hook(_, args, kwargs):
            bound = dict(zip(names, args)) | kwargs
            self.timesteps.append(float(torch.as_tensor(bound[t]).flatten()[0]))
            h = bound[hidden]
            self.batches.append(h.shape[0] if torch.is_tensor(h) else len(h))
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def run(pipe: Any, kwargs: dict, steps: int):
    out = pipe(**kwargs, num_inference_steps=steps, generator=torch.Generator().manual_seed(0), output_type="latent")
    return out[0]


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return torch.equal(a, b)


def _affine(xs: list[float], ys: list[float]) -> bool:
    """Whether ``ys`` is an affine function of ``xs`` (to float32 precision)."""
    x, y = torch.tensor(xs, dtype=torch.float64), torch.tensor(ys, dtype=torch.float64)
    a = torch.stack([x, torch.ones_like(x)], 1)
    fit = a @ torch.linalg.lstsq(a, y[:, None]).solution
    return bool((fit[:, 0] - y).abs().max() <= 1e-4 * max(1.0, float(y.abs().max())))


def _mask(steps: int, budget: int, forced: list[int]) -> list[int]:
    mask = list(uniform_mask(steps, budget))
    for f in forced:
        if not mask[f]:
            j = max(j for j in range(steps) if mask[j] and j not in forced and j != 0)
            mask[f], mask[j] = 1, 0
    return mask


def experts(pipe: Any) -> dict[str, torch.nn.Module]:
    return {n: getattr(pipe, n) for n in ("transformer", "transformer_2") if getattr(pipe, n, None) is not None}


def plans(pipe: Any, kwargs: dict, steps: int, budget: int, bend: float = 0.0) -> tuple[CachePlan, CachePlan]:
    """A uniform plan that computes the pipeline's forced steps (its sigmas bent by ``bend``: a
    schedule the pipeline would not pick) and an all-ones plan, both for ``kwargs``."""
    try:
        calib = calibrate(pipe, [kwargs], steps, progress=False)
        forced, default, boundary = calib.forced_steps(), calib.sigmas, calib.boundary_ratio
    except ValueError:  # a pipeline calibrate does not support (LTX-2): its own schedule, no forced steps
        run(pipe, kwargs, steps)
        forced, default, boundary = [], [float(s) for s in pipe.scheduler.sigmas], None
    sigmas = [s + bend * s * (1 - s) for s in default] if bend else None
    plan = CachePlan(num_steps=steps, budget=budget, mask=_mask(steps, budget, forced), sigmas=sigmas,
                     boundary_ratio=boundary)
    return plan, CachePlan(num_steps=steps, budget=steps, mask=[1] * steps, boundary_ratio=boundary)


def check(name: str, steps: int = 8, budget: int = 4, search_check: bool = True) -> Coverage:
    """Run every coverage check of one family (see the module docstring)."""
    with torch.no_grad():
        pipe, kwargs = FAMILIES[name]()
        full = run(pipe, kwargs, steps)
        plan, ones = plans(pipe, kwargs, steps, budget, bend=0.02)
        sigmas = plan.sigmas
        with apply(pipe, ones):
            all_ones = _equal(run(pipe, kwargs, steps), full)
        spy = Spy(experts(pipe))
        try:
            with apply(pipe, plan) as handle:
                run(pipe, kwargs, steps)
                branches = handle.summary()
                seen = [float(s) for s in pipe.scheduler.sigmas]
        finally:
            spy.remove()
        removed = _equal(run(pipe, kwargs, steps), full)
        calls = len(spy.timesteps) // steps
        per_step = [spy.timesteps[i] for i in range(0, len(spy.timesteps), calls)]
        result = Coverage(
            family=name, pipeline=type(pipe).__name__, transformer=type(pipe.transformer).__name__,
            reuse=reuse_for(pipe.transformer, "residual"), segments=[len(b) for b in block_lists(pipe.transformer)],
            branches=branches, calls_per_step=calls, batched=max(spy.batches) > _batch(full),
            executions=spy.executions, all_ones_identical=all_ones, removed_identical=removed,
            sigmas_reach=seen == [float(torch.tensor(s, dtype=torch.float32)) for s in sigmas]
            and _affine(sigmas[:-1], per_step), budget=budget, steps=steps,
            details={"mask": plan.strip},
        )
        if search_check:
            result.search = _search_check(pipe, kwargs, steps, budget)
    return result


def _batch(x: Any) -> int:
    return len(x) if isinstance(x, (list, tuple)) else x.shape[0]


def _search_check(pipe: Any, kwargs: dict, steps: int, budget: int) -> str:
    """calibrate -> search -> apply: "exact" when the applied MSE is the searched loss, else why not."""
    try:
        calib = calibrate(pipe, [kwargs], steps, progress=False)
        plan = search(calib, budget, config=SearchConfig(iterations=20, starts=1, kicks=0, hill_climb=False),
                      progress=False)
    except (ValueError, RuntimeError) as e:
        return "no: " + str(e).split(" (")[0].split(";")[0].removeprefix("budcache ")
    full = run(pipe, kwargs, steps)
    with apply(pipe, plan):
        cached = run(pipe, kwargs, steps)
    error = float(torch.stack([(c.float() - f.float()).pow(2).mean() for c, f in zip(as_list(cached), as_list(full))]).mean())
    ok = abs(error - plan.record.objective) <= 1e-4 * max(plan.record.objective, 1e-12) + 1e-12
    return "exact" if ok else f"mismatch: applied {error:.3g} vs searched {plan.record.objective:.3g}"


def as_list(x: Any) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _cfg(c: Coverage) -> str:
    names = list(dict.fromkeys(k.split("/")[-1] for k in c.branches))
    experts = " per expert" if any("/" in k for k in c.branches) else ""
    if c.batched:
        return f"{c.calls_per_step} batched call/step ({', '.join(names)})"
    if len(names) == 1:
        return "1 call/step" + ("" if names == ["default"] else f" ({names[0]})")
    return f"{len(names)} calls/step, own caches ({', '.join(names)}){experts}"


def row(c: Coverage) -> str:
    ok = lambda b: "yes" if b else "**no**"
    reuse = f"{c.reuse} ({'+'.join(map(str, c.segments))} blocks)" if c.reuse == "residual" else c.reuse
    tested = (f"pipeline: {c.budget}/{c.steps} computed per branch {ok(c.exact_budget)}, "
              f"all-ones {ok(c.all_ones_identical)}, remove() {ok(c.removed_identical)}, search {c.search or 'not run'}")
    return f"| {c.family} | `{c.pipeline}` | {reuse} | {_cfg(c)} | {ok(c.sigmas_reach)} | {tested} |"


HEADER = ("| family | pipeline | reuse | CFG handling | custom sigmas reach the transformer | tested how |\n"
          "|---|---|---|---|---|---|")
START, END = "<!-- coverage:start -->", "<!-- coverage:end -->"


def table(results: Iterable[Coverage]) -> str:
    return "\n".join([HEADER, *(row(c) for c in results)])


def readme_table(readme: Path) -> str:
    text = readme.read_text()
    match = re.search(re.escape(START) + r"\n(.*?)\n" + re.escape(END), text, re.S)
    if match is None:
        raise ValueError(f"{readme} has no {START} ... {END} block")
    return match.group(1)


def write_readme(readme: Path, content: str) -> None:
    text = readme.read_text()
    new = re.sub(re.escape(START) + r"\n.*?\n" + re.escape(END), lambda _: f"{START}\n{content}\n{END}", text,
                 flags=re.S)
    readme.write_text(new)


if __name__ == "__main__":
    torch.set_num_threads(1)
    readme = Path(sys.argv[1] if len(sys.argv) > 1 else "README.md")
    write_readme(readme, table(check(name) for name in FAMILIES))
    print(readme_table(readme))
