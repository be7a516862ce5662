"""``budcache demo``: search plans for a few budgets on the demo model and compare them honestly."""

from __future__ import annotations

from pathlib import Path

from ..evaluation import plots
from ..evaluation.compare import compare_plans
from ..evaluation.report import Row, write
from ..plan import CachePlan
from ..search import SearchConfig, search_source
from .problem import demo_source


def run_demo(
    out: Path,
    budgets: tuple[int, ...] = (6, 8, 10),
    steps: int = 28,
    reuse: str = "residual",
    calibration: int = 32,
    held_out: int = 100,
    config: SearchConfig = SearchConfig(),
    progress: bool = True,
    rules: tuple[str, ...] = ("repeat", "extrapolate"),
    scheduler: str = "euler",
) -> list[Row]:
    """The main job: search a plan per budget and rule on the demo source, score them beside the
    uniform mask and every plain solver on held-out samples (:func:`compare_plans`), and write
    plans, the report, an image grid and plots to ``out``. ``scheduler``: the demo's solver
    (``euler``, ``unipc``, ``dpm``): plans are searched and scored under it, beside it with B steps."""
    out.mkdir(parents=True, exist_ok=True)
    plans: list[tuple[str, CachePlan]] = []
    histories = {}
    with demo_source(
        steps, calibration, held_out=held_out, seed=config.seed, reuse=reuse, scheduler=scheduler
    ) as source:
        for b in budgets:
            for rule in rules:
                plan, result = search_source(
                    source, b, rule=rule, config=config, progress=progress, fallback=False
                )  # the comparison that follows scores plain sampling
                plan.save(out / f"plan_B{b}_{rule}.json")
                if plan.record.interrupted:  # saved; Ctrl-C / SIGTERM stops the demo
                    raise KeyboardInterrupt
                plots.plot_plan(plan, out / f"plan_B{b}_{rule}.png")
                histories[f"B={b} {rule}"] = result
                kept = "per-step rules" if plan.rules is not None else plan.rule
                plans.append((rule if kept == rule else f"{rule} -> {kept}", plan))
                print(
                    f"B={b} {rule}: {plan.strip} (kept rule: {plan.rule})  search {plan.record.seconds:.1f}s, "
                    f"{plan.record.evaluations} masks, {plan.record.forwards} forwards "
                    f"({plan.record.forwards_without_prefix_reuse} without prefix reuse)",
                    flush=True,
                )
        rows, images = compare_plans(source, plans)
    plots.plot_history(histories, out / "search_history.png")
    grid = [("full", images["full"])]
    for b in budgets:
        grid += [
            (name, img)
            for name, img in images.items()
            if name.startswith(f"B={b} plan") or name == f"B={b} plain {b}-step AB2"
        ]
    plots.image_grid(grid, out / "samples.png")
    write(rows, images, out)
    return rows
