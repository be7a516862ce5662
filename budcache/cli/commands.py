"""The command handlers: each reads its (checked, :mod:`.checks`) options, opens the model source and
calls the library. Outputs are written so that nothing is lost: a plan that cannot be written where
asked is written elsewhere, and the message says where."""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import tempfile
from pathlib import Path

from ..align import AlignConfig, align
from ..errors import BudcacheError, PlanError
from ..evaluation import plots
from ..plan import CachePlan
from ..search import search_source
from ..search.checkpoint import held
from .launch import open_source, rank_and_world
from .options import search_config


def write_plan(plan: CachePlan, path: Path, *fallbacks: Path) -> None:
    """Save ``plan`` at ``path``; when that fails, at the first fallback that works (then a
    BudcacheError says where), beside the system's temporary files at the last."""
    try:
        plan.save(path)
        return
    except OSError as e:
        reason = e.strerror or str(e)
    for other in (*fallbacks, Path(tempfile.gettempdir()) / f"budcache-{path.name}"):
        try:
            plan.save(other)
        except OSError:
            continue
        raise BudcacheError(f"cannot write {path} ({reason}); the plan was saved to {other} instead")
    raise BudcacheError(
        f"cannot write {path} ({reason}), nor anywhere else; the plan is: " + json.dumps(plan.to_dict())
    )


def _plot(draw, *args) -> None:
    """A figure is a bonus: one that cannot be written is a warning, never a lost result."""
    try:
        draw(*args)
    except OSError as e:
        print(f"budcache: warning: no plot written ({e})", file=sys.stderr)


def cmd_search(a: argparse.Namespace) -> None:
    rank, world = rank_and_world()
    with held(a.checkpoint), open_source(a, rank=rank, world=world) as source:  # locked before loading
        plan, result = search_source(
            source,
            a.budget,
            rule=a.rule or "repeat",
            config=search_config(a),
            max_state_mb=a.state_mb,
            progress=not (a.no_progress or rank),
            checkpoint=a.checkpoint,
            resume=a.resume,
            announce=None if rank else functools.partial(print, file=sys.stderr, flush=True),
        )
    if rank:
        return
    print(plan.describe())
    write_plan(plan, a.out, a.checkpoint.with_suffix(".plan.json"))
    _plot(plots.plot_history, {f"B={a.budget}": result}, a.history)
    if plan.record is not None and plan.record.interrupted:
        print(
            f"interrupted: saved the best plan found so far to {a.out} (evaluations in {a.checkpoint}); "
            "continue with the same command and --resume",
            file=sys.stderr,
        )
        return
    print(f"saved {a.out} and {a.history} (evaluations in {a.checkpoint})")


def cmd_show(a: argparse.Namespace) -> None:
    plan = a.loaded
    print(json.dumps(plan.to_dict(), indent=1) if a.json else plan.describe())
    if a.png:
        print(f"saved {plots.plot_plan(plan, a.png)}")


def cmd_demo(a: argparse.Namespace) -> None:
    from ..demo.run import run_demo

    run_demo(
        a.out,
        tuple(a.budgets),
        a.steps,
        a.reuse,
        a.calib,
        a.held_out,
        search_config(a),
        not a.no_progress,
        tuple(a.rules),
        a.scheduler,
    )
    print(f"wrote plans, table.txt, results.json, samples.png and plots to {a.out}/")


def _check_models(plans: list[tuple[Path, CachePlan]], model: object) -> None:
    for path, plan in plans:
        try:
            plan.check_model(model)
        except PlanError as e:
            raise PlanError(f"{path}: {e}") from None


def cmd_compare(a: argparse.Namespace) -> None:
    from ..evaluation import compare
    from ..evaluation.report import write

    if a.plans:
        with open_source(a, held_out=True, validation=False) as source:
            _check_models(a.loaded, source.model)
            rows, images = compare.compare_plans(source, [(path.stem, plan) for path, plan in a.loaded])
        write(rows, images, a.out)
        print(f"wrote table.txt, results.csv and results.json to {a.out}/")
        return
    with open_source(a, held_out=True, validation=False) as source:
        rows, images = compare.compare(
            source,
            a.budgets,
            tuple(a.rules),
            search_config(a),
            progress=not a.no_progress,
            align_epochs=a.align_epochs,
            magcache=a.magcache,
            max_state_mb=a.state_mb,
        )
    write(rows, images, a.out)
    print(f"wrote table.txt, results.csv, results.json, quality_vs_nfe.png and samples_B*.png to {a.out}/")


def cmd_align(a: argparse.Namespace) -> None:
    plan = a.loaded
    config = AlignConfig(epochs=a.epochs, lr=a.lr, checkpointing=not a.no_checkpointing, model_times=a.model_times)
    with open_source(a, reuse=plan.reuse) as source:
        _check_models([(a.plan, plan)], source.model)
        validation = source.batches("validation") if source.has("validation") else None
        # a plan searched at the pipeline's default schedule (no sigmas) starts from that schedule
        aligned, result = align(
            plan,
            source.batches("calib"),
            validation,
            config,
            progress=not a.no_progress,
            restarts=source.restarts,
            teacher_sigmas=None if plan.sigmas else source.sigmas,
            solver=source.solver,
            checkpoint=a.checkpoint,
            resume=a.resume,
        )
    v0, v1 = result.validation_loss[0], min(result.validation_loss)
    print(aligned.describe())
    print(
        f"validation MSE {v0:.4g} -> {v1:.4g} ({10 * math.log10(v0 / v1):+.2f} dB), "
        f"{'kept epoch ' + str(result.best_epoch) if result.improved else 'input schedule kept'}"
        + (
            ""
            if not a.model_times
            else ", with decoupled model times"
            if aligned.model_sigmas is not None
            else ", decoupled model times did not improve validation (not kept)"
        )
    )
    write_plan(aligned, a.out)
    figure = a.out.with_suffix(".png")
    _plot(plots.plot_alignment, aligned, result, figure)
    if result.interrupted:
        print(
            f"interrupted after {len(result.train_loss)} epochs: saved the best schedule so far to {a.out}; "
            f"the same command with --resume goes on from {a.checkpoint}",
            file=sys.stderr,
        )
        return
    print(f"saved {a.out} and {figure} (state in {a.checkpoint})")


def cmd_frontier(a: argparse.Namespace) -> None:
    from ..evaluation.frontier import frontier

    with open_source(a, held_out=True, validation=False) as source:
        rows = frontier(source, a.budgets, a.out, search_config(a), not a.no_progress, a.state_mb, a.rule)
    for r in rows:
        plain = "   ".join(f"{k} {r[k]:6.2f}" for k in r if k.startswith("plain "))
        image = (
            ""
            if "image" not in r
            else "   image PSNR / SSIM "
            + "  ".join(f"{m} {s['psnr']:.2f} / {s['ssim']:.3f}" for m, s in r["image"].items())
        )
        print(
            f"B={r['budget']:>2}  {r['mask']}  budcache {r['budcache']:6.2f} dB   uniform {r['uniform mask']:6.2f}   "
            f"{plain}{image}"
        )
    print(f"wrote plan_B*.json, the plan set plans.json, frontier.json and frontier.png to {a.out}/")
