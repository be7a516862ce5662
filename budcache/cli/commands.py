"""The command handlers: each reads its options, opens the model source and calls the library."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from ..align import AlignConfig, align, require_euler
from ..evaluation import plots
from ..plan import CachePlan
from ..search import search_source
from .launch import check_source_options, open_source, rank_and_world
from .options import parse_budgets, search_config


def cmd_search(a: argparse.Namespace) -> None:
    if not 1 <= a.budget <= a.steps:
        raise SystemExit(f"--budget must be between 1 and --steps ({a.steps}), got {a.budget}")
    history = a.history or a.out.with_suffix(".history.png")
    checkpoint = a.checkpoint or a.out.with_suffix(".checkpoint.json")
    if a.resume and not checkpoint.exists():
        raise SystemExit(f"--resume: no checkpoint at {checkpoint}")
    check_source_options(a)
    rank, world = rank_and_world()
    with open_source(a, rank=rank, world=world) as source:
        plan, result = search_source(source, a.budget, rule=a.rule, config=search_config(a), max_state_mb=a.state_mb,
                                     progress=not (a.no_progress or rank), checkpoint=checkpoint, resume=a.resume)
    if rank:
        return
    plots.plot_history({f"B={a.budget}": result}, history)
    plan.save(a.out)
    if plan.record is not None and plan.record.interrupted:
        print("interrupted: saved the best plan found so far", file=sys.stderr)
    print(plan.describe())
    print(f"saved {a.out} and {history} (evaluations in {checkpoint})")


def cmd_show(a: argparse.Namespace) -> None:
    plan = CachePlan.load(a.plan)
    print(json.dumps(plan.to_dict(), indent=1) if a.json else plan.describe())
    if a.png:
        print(f"saved {plots.plot_plan(plan, a.png)}")


def cmd_demo(a: argparse.Namespace) -> None:
    from ..demo.run import run_demo

    run_demo(a.out, tuple(a.budgets), a.steps, a.reuse, a.calib, a.held_out, search_config(a), not a.no_progress,
             tuple(a.rules), a.scheduler)
    print(f"wrote plans, table.txt, results.json, samples.png and plots to {a.out}/")


def cmd_compare(a: argparse.Namespace) -> None:
    from ..evaluation import compare
    from ..evaluation.report import write

    if a.plans:
        plans = [(Path(path).stem, CachePlan.load(path)) for path in a.plans]
        steps = {p.num_steps for _, p in plans}
        if len(steps) > 1:
            raise SystemExit(f"plans compared together need one step count, got {sorted(steps)}")
        with open_source(a, held_out=True, validation=False, steps=steps.pop()) as source:
            rows, images = compare.compare_plans(source, plans)
        write(rows, images, a.out)
        print(f"wrote table.txt, results.csv and results.json to {a.out}/")
        return
    budgets = parse_budgets(a.budgets, a.steps)
    config = search_config(a)
    with open_source(a, held_out=True, validation=False) as source:
        rows, images = compare.compare(source, budgets, tuple(a.rules), config, progress=not a.no_progress,
                                       align_epochs=a.align_epochs, magcache=a.magcache, max_state_mb=a.state_mb)
    write(rows, images, a.out)
    print(f"wrote table.txt, results.csv, results.json, quality_vs_nfe.png and samples_B*.png to {a.out}/")


def cmd_align(a: argparse.Namespace) -> None:
    plan = CachePlan.load(a.plan)
    config = AlignConfig(epochs=a.epochs, lr=a.lr, checkpointing=not a.no_checkpointing)
    with open_source(a, reuse=plan.reuse, steps=plan.num_steps) as source:
        plan.check_model(source.model)
        require_euler(source.solver)
        validation = source.batches("validation") if source.has("validation") else None
        aligned, result = align(plan, source.batches("calib"), validation, config, progress=not a.no_progress,
                                restarts=source.restarts)
    aligned.save(a.out)
    figure = plots.plot_alignment(aligned, result, a.out.with_suffix(".png"))
    v0, v1 = result.validation_loss[0], min(result.validation_loss)
    print(aligned.describe())
    print(f"validation MSE {v0:.4g} -> {v1:.4g} ({10 * math.log10(v0 / v1):+.2f} dB), "
          f"{'kept epoch ' + str(result.best_epoch) if result.improved else 'input schedule kept'}")
    print(f"saved {a.out} and {figure}")


def cmd_frontier(a: argparse.Namespace) -> None:
    from ..evaluation.frontier import frontier

    budgets = parse_budgets(a.budgets, a.steps)
    with open_source(a, held_out=True, validation=False) as source:
        rows = frontier(source, budgets, a.out, search_config(a), not a.no_progress, a.state_mb)
    for r in rows:
        plain = next(k for k in r if k.startswith("plain "))
        print(f"B={r['budget']:>2}  {r['mask']}  budcache {r['budcache']:6.2f} dB   uniform {r['uniform mask']:6.2f}   "
              f"{plain} {r[plain]:6.2f}")
    print(f"wrote plan_B*.json, frontier.json and frontier.png to {a.out}/")
