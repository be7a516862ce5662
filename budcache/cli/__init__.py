"""Command line: ``budcache search | frontier | align | compare | show | demo``.

Every command that runs a model takes the same model source (``--model demo`` or ``--pipeline``
with prompt files, :mod:`.options`), built the same way (:mod:`.launch`); the handlers
(:mod:`.commands`) are thin calls into the library. Before a handler runs, :mod:`.checks` refuses
every mistake it can see without loading anything; :mod:`.run` turns every outcome into one line on
stderr and an exit code (2 usage, 1 failure, 130 / 143 interrupted).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..align import AlignConfig
from ..sampling.rules import RULES
from . import checks
from .commands import cmd_align, cmd_compare, cmd_demo, cmd_frontier, cmd_search, cmd_show
from .options import (
    DEMO_EFFORT,
    DEMO_STEPS,
    add_budgets_option,
    add_progress_option,
    add_scheduler_option,
    add_search_options,
    add_source_options,
    integer,
    number,
)
from .run import Parser, run


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="budcache", description="Budget-constrained step-level diffusion caching")
    parser.add_argument(
        "--threads",
        type=integer(1),
        default=None,
        help="torch CPU threads (default: torch's choice; 1 avoids oversubscription on a busy machine)",
    )
    parser.add_argument(
        "--debug", action="store_true", help="print the traceback of an unexpected error (also: BUDCACHE_DEBUG=1)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("search", help="search a caching plan for a fixed budget")
    p.add_argument("--budget", type=integer(1), required=True, help="transformer executions B per generation")
    p.add_argument("--out", type=Path, required=True, help="where to write the plan (JSON)")
    p.add_argument("--history", type=Path, default=None, help="search-history plot (default: next to --out)")
    add_source_options(p, calib=32)
    add_search_options(p, checkpoint=True, choose=True)
    add_progress_option(p)
    p.set_defaults(func=cmd_search, check=checks.check_search)

    p = sub.add_parser("frontier", help="plans for every budget in one run, and the quality-vs-budget curve")
    add_budgets_option(p, list(range(4, 21)))
    p.add_argument("--out", type=Path, default=Path("frontier-out"), help="output folder (default frontier-out)")
    add_source_options(p, held_out=True)
    add_search_options(p, DEMO_EFFORT)
    add_progress_option(p)
    p.set_defaults(func=cmd_frontier, check=checks.check_frontier)

    p = sub.add_parser("align", help="stage 2: learn a plan's sigma schedule by distillation")
    p.add_argument("plan", type=Path)
    p.add_argument("--out", type=Path, required=True, help="where to write the aligned plan")
    add_source_options(p, validation=100)  # 32 picked schedules that lost on held-out samples (README, stage 2)
    p.add_argument("--epochs", type=integer(1), default=AlignConfig.epochs)
    p.add_argument("--lr", type=number(0, strict=True), default=AlignConfig.lr)
    p.add_argument("--no-checkpointing", action="store_true", help="keep every activation (more memory)")
    p.add_argument(
        "--model-times",
        action="store_true",
        help="then also learn the noise level the transformer is told per step (LD3's decoupled times, "
        "another --epochs); kept only where validation improves",
    )
    p.add_argument(
        "--checkpoint", type=Path, default=None, help="the state after every epoch (default: --out with .checkpoint.pt)"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted alignment from --checkpoint (same result as an uninterrupted run)",
    )
    add_progress_option(p)
    p.set_defaults(func=cmd_align, check=checks.check_align)

    p = sub.add_parser("show", help="print a plan (a plan set as a table), optionally plot it")
    p.add_argument("plan", type=Path)
    p.add_argument("--png", type=Path, default=None, help="write the mask over the sigma schedule")
    p.add_argument("--json", action="store_true", help="print the whole plan as JSON")
    p.set_defaults(func=cmd_show, check=checks.check_show)

    p = sub.add_parser("compare", help="every caching policy at matched NFE on held-out samples (or saved plans)")
    p.add_argument("plans", type=Path, nargs="*", help="saved plans to score instead (grouped by budget)")
    add_source_options(p, held_out=True)
    p.add_argument(
        "--magcache",
        choices=("flux", "wan2.1-1.3b", "diffusers"),
        default="flux",
        help="MagCache preset (max skip, retention) kept while its threshold is scanned (default flux)",
    )
    p.add_argument(
        "--align-epochs",
        type=integer(0),
        default=0,
        help="also stage 2: align budcache's plan and plain Euler's B-step schedule (0: skip)",
    )
    add_budgets_option(p, [6, 8, 10, 14])
    p.add_argument(
        "--rules",
        nargs="+",
        choices=RULES,
        default=["repeat", "extrapolate"],
        help="shared reuse rules: every policy runs under each (default: repeat extrapolate)",
    )
    add_search_options(p, DEMO_EFFORT, rule=False)
    add_progress_option(p)
    p.add_argument("--out", type=Path, default=Path("compare-out"), help="output folder (default compare-out)")
    p.set_defaults(
        func=cmd_compare,
        check=checks.check_compare,
        search_defaults={name: p.get_default(name) for name in checks.COMPARE_SEARCH_ONLY},
    )

    p = sub.add_parser("demo", help="search plans on the demo model and compare with uniform masks and fewer steps")
    p.add_argument("--out", type=Path, default=Path("demo-out"), help="output folder (default demo-out)")
    add_budgets_option(p, [6, 8, 10])
    p.add_argument("--steps", type=integer(1), default=DEMO_STEPS, help=f"denoising steps K (default {DEMO_STEPS})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--calib", type=integer(1), default=16, help="calibration samples (default 16)")
    p.add_argument("--held-out", type=integer(1), default=100, help="held-out samples for the comparison")
    p.add_argument("--reuse", choices=("residual", "output"), default="residual")
    add_scheduler_option(p)
    p.add_argument(
        "--rules",
        nargs="+",
        choices=RULES,
        default=["repeat", "extrapolate"],
        help="search a plan under each of these reuse rules (default: repeat extrapolate)",
    )
    add_search_options(p, DEMO_EFFORT, rule=False)
    add_progress_option(p)
    p.set_defaults(func=cmd_demo, check=checks.check_demo)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Run a command: refuse bad input before anything is loaded, then run it (exit codes: see :mod:`.run`)."""
    run(build_parser(), argv)
