"""Command line: ``budcache search | frontier | align | compare | show | demo``.

Every command that runs a model takes the same model source (``--model demo`` or ``--pipeline``
with prompt files, :mod:`.options`), built the same way (:mod:`.launch`); the handlers
(:mod:`.commands`) are thin calls into the library.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..align import AlignConfig
from ..errors import BudcacheError
from ..sampling.rules import RULES
from .commands import cmd_align, cmd_compare, cmd_demo, cmd_frontier, cmd_search, cmd_show
from .options import DEMO_EFFORT, add_progress_option, add_scheduler_option, add_search_options, add_source_options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="budcache", description="Budget-constrained step-level diffusion caching")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice; 1 avoids oversubscription on a busy machine)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("search", help="search a caching plan for a fixed budget")
    p.add_argument("--budget", type=int, required=True, help="transformer executions B per generation")
    p.add_argument("--out", type=Path, required=True, help="where to write the plan (JSON)")
    p.add_argument("--history", type=Path, default=None, help="search-history plot (default: next to --out)")
    add_source_options(p, calib=32)
    add_search_options(p, checkpoint=True)
    add_progress_option(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("frontier", help="plans for every budget in one run, and the quality-vs-budget curve")
    p.add_argument("--budgets", default="4..20", help="comma list or range (default 4..20)")
    p.add_argument("--out", type=Path, default=Path("frontier-out"))
    add_source_options(p, held_out=True)
    add_search_options(p, DEMO_EFFORT, rule=False)
    add_progress_option(p)
    p.set_defaults(func=cmd_frontier)

    p = sub.add_parser("align", help="stage 2: learn a plan's sigma schedule by distillation")
    p.add_argument("plan", type=Path)
    p.add_argument("--out", type=Path, required=True, help="where to write the aligned plan")
    add_source_options(p, validation=32)
    p.add_argument("--epochs", type=int, default=AlignConfig.epochs)
    p.add_argument("--lr", type=float, default=AlignConfig.lr)
    p.add_argument("--no-checkpointing", action="store_true", help="keep every activation (more memory)")
    add_progress_option(p)
    p.set_defaults(func=cmd_align)

    p = sub.add_parser("show", help="print a plan, optionally plot it")
    p.add_argument("plan", type=Path)
    p.add_argument("--png", type=Path, default=None, help="write the mask over the sigma schedule")
    p.add_argument("--json", action="store_true", help="print the whole plan as JSON")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("compare", help="every caching policy at matched NFE on held-out samples (or saved plans)")
    p.add_argument("plans", type=Path, nargs="*", help="saved plans to score instead (grouped by budget)")
    add_source_options(p, held_out=True)
    p.add_argument("--magcache", choices=("flux", "wan2.1-1.3b", "diffusers"), default="flux",
                   help="MagCache preset (max skip, retention) kept while its threshold is scanned (default flux)")
    p.add_argument("--align-epochs", type=int, default=0,
                   help="also stage 2: align budcache's plan and plain Euler's B-step schedule (0: skip)")
    p.add_argument("--budgets", default="6,8,10,14", help="comma list or range, e.g. 6,8,10,14 or 4..20")
    p.add_argument("--rules", nargs="+", choices=RULES, default=["repeat", "extrapolate"],
                   help="shared reuse rules: every policy runs under each (default: repeat extrapolate)")
    add_search_options(p, DEMO_EFFORT, rule=False)
    add_progress_option(p)
    p.add_argument("--out", type=Path, default=Path("compare-out"))
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("demo", help="search plans on the demo model and compare with uniform masks and fewer steps")
    p.add_argument("--out", type=Path, default=Path("demo-out"))
    p.add_argument("--budgets", type=int, nargs="+", default=[6, 8, 10])
    p.add_argument("--steps", type=int, default=28, help="denoising steps K (default 28)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--calib", type=int, default=16, help="calibration samples (default 16)")
    p.add_argument("--held-out", type=int, default=100, help="held-out samples for the comparison")
    p.add_argument("--reuse", choices=("residual", "output"), default="residual")
    add_scheduler_option(p)
    p.add_argument("--rules", nargs="+", choices=RULES, default=["repeat", "extrapolate"],
                   help="search a plan under each of these reuse rules (default: repeat extrapolate)")
    add_search_options(p, DEMO_EFFORT, rule=False)
    add_progress_option(p)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> None:
    a = build_parser().parse_args(argv)
    if a.threads is not None:
        import torch

        torch.set_num_threads(a.threads)
    try:
        a.func(a)
    except BudcacheError as e:
        raise SystemExit(f"error: {e}") from None
