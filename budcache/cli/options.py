"""Option groups shared by the commands: the model source, the search effort, the budgets; and the
types that refuse a bad number while the command line is parsed."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..sampling.rules import RULES
from ..search import EFFORTS, SearchConfig
from ..search.config import CHOICE, STARTS

# `demo`, `compare`, `frontier` must finish in minutes: 100 annealing proposals from the uniform mask and screened
# steepest descent over every swap (the README's demo and comparison figures were measured with it)
DEMO_EFFORT = SearchConfig(
    strategy="classic", iterations=100, starts=1, kicks=0, start=("uniform",), reach=0, sweep=False
)

DEMO_STEPS = 28


def integer(least: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``least``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expects an integer, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
        return value

    return parse


def size(text: str) -> tuple[int, ...]:
    """An argparse type: ``HEIGHTxWIDTH`` (or ``HEIGHTxWIDTHxFRAMES``) of positive integers."""
    parts = text.lower().split("x")
    if len(parts) not in (2, 3) or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"expects HEIGHTxWIDTH such as 1024x768, got {text!r}")
    return tuple(int(p) for p in parts)


def number(least: float = -math.inf, strict: bool = False, most: float = math.inf) -> Callable[[str], float]:
    """An argparse type: a finite number of at least ``least`` (above it when ``strict``), at most ``most``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expects a number, got {text!r}") from None
        if not math.isfinite(value) or value < least or (strict and value == least) or value > most:
            bound = "" if least == -math.inf else f" {'above' if strict else 'at least'} {least:g}"
            bound += "" if most == math.inf else f" and at most {most:g}"
            raise argparse.ArgumentTypeError(f"must be a finite number{bound}, got {text}")
        return value

    return parse


def budget_list(text: str) -> list[int]:
    """An argparse type: ``6,8,10``, ``4..20`` or ``6``."""
    try:
        if ".." in text:
            lo, hi = (int(t) for t in text.split(".."))
            if lo > hi:
                raise argparse.ArgumentTypeError(
                    f"{text} is an empty range; write the smaller budget first ({hi}..{lo})"
                )
            if hi - lo > 100_000:
                raise argparse.ArgumentTypeError(
                    f"{text} is far wider than any step count; a budget is at most --steps"
                )
            budgets = list(range(lo, hi + 1))
        else:
            budgets = [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"takes a comma list (6,8,10), a range (4..20) or budgets one by one (6 8 10), got {text!r}"
        ) from None
    if not budgets or min(budgets) < 1:
        raise argparse.ArgumentTypeError(f"budgets are at least 1, got {text!r}")
    return budgets


def add_budgets_option(p: argparse.ArgumentParser, default: list[int]) -> None:
    p.add_argument(
        "--budgets",
        type=budget_list,
        nargs="+",
        default=[default],
        metavar="BUDGETS",
        help=f"comma list, range or one by one: 6,8,10 or 4..20 or 6 8 10 (default {','.join(map(str, default))})",
    )


def add_source_options(
    p: argparse.ArgumentParser, calib: int = 16, held_out: bool = False, validation: int | None = None
) -> None:
    """``--model demo`` or ``--pipeline PATH_OR_ID`` with its prompts and call arguments."""
    g = p.add_argument_group("model source (the demo model, or a diffusers pipeline)")
    g.add_argument("--model", default="demo", help="the embedded demo model (default), or use --pipeline")
    g.add_argument(
        "--pipeline",
        default=None,
        metavar="PATH_OR_ID",
        help="a diffusers pipeline (local folder or hub id) instead of the demo model",
    )
    add_steps_option(g)
    g.add_argument("--seed", type=int, default=0, help="seed of the noise (prompt i: seed + i) and of the search")
    g.add_argument(
        "--calib", type=integer(1), default=None, help=f"calibration samples of the demo model (default {calib})"
    )
    g.add_argument("--prompts", type=Path, default=None, help="calibration prompts for --pipeline (.txt, .jsonl, .csv)")
    g.add_argument(
        "--validation-prompts",
        type=Path,
        default=None,
        help="other prompts on which a predictive rule must beat repeat, or stage 2 keeps its best "
        "schedule (default: the calibration ones)",
    )
    demo = {"calib": calib}
    if validation is not None:
        g.add_argument(
            "--validation",
            type=integer(0),
            default=None,
            help=f"validation samples of the demo model (default {validation}; 0: none)",
        )
        demo["validation"] = validation
    if held_out:
        g.add_argument(
            "--held-out",
            type=integer(1),
            default=None,
            help="held-out demo samples, never calibration ones (default 100)",
        )
        g.add_argument("--held-out-prompts", type=Path, default=None, help="held-out evaluation prompts for --pipeline")
        demo["held_out"] = 100
    p.set_defaults(demo_defaults=demo)
    g.add_argument("--height", type=integer(1), default=None)
    g.add_argument("--width", type=integer(1), default=None)
    g.add_argument(
        "--sizes",
        type=size,
        nargs="+",
        default=None,
        metavar="HxW",
        help="calibrate every prompt at each size (e.g. 1024x1024 768x1344): the plan serves these sizes "
        "and those between",
    )
    g.add_argument("--guidance-scale", type=number(), default=None)
    g.add_argument("--negative-prompt", default=None)
    g.add_argument(
        "--call",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another pipeline call argument (value parsed as JSON when it can be), repeatable",
    )
    g.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        default=None,
        help="model dtype (default bfloat16 on a GPU, float32 on CPU)",
    )
    g.add_argument("--device", default=None, help="torch device (default cuda when available)")
    g.add_argument("--cpu-offload", action="store_true", help="enable_model_cpu_offload for large models")
    g.add_argument(
        "--reuse",
        choices=("residual", "output"),
        default="residual",
        help="what reused steps take from the cache (default residual)",
    )
    add_scheduler_option(g)


def add_steps_option(p: Any) -> None:
    p.add_argument(
        "--steps",
        type=integer(1),
        default=None,
        help=f"denoising steps K (default {DEMO_STEPS}; a plan's own K when a plan is given)",
    )


def add_scheduler_option(p: Any) -> None:
    p.add_argument(
        "--scheduler",
        choices=("euler", "unipc", "dpm"),
        default="euler",
        help="the demo model's solver: Euler on linear sigmas, or diffusers' flow UniPC / DPM-Solver++ 2M "
        "on their own schedules (a --pipeline always runs its own scheduler; default euler)",
    )


def add_search_options(
    p: argparse.ArgumentParser,
    effort: SearchConfig = SearchConfig(),
    rule: bool = True,
    checkpoint: bool = False,
    choose: bool = False,
) -> None:
    """Search effort, reuse rule, prefix-state memory, optional checkpointing."""
    g = p.add_argument_group("search")
    g.add_argument(
        "--effort",
        choices=sorted(EFFORTS),
        default=None,
        help="a named search effort: default (budget-first: ranks starts on a share of the prompts, climbs, "
        "kicks and anneals until --max-forwards is spent; 7 K forwards per prompt unless given), local "
        "(the uncapped local search of earlier releases), annealed (annealing + screened hill climbing "
        "over every swap + 4 kicks: for rugged objectives), thorough (the same unscreened), long (the "
        "reference search); the options below override it",
    )
    g.add_argument(
        "--iterations",
        type=integer(0),
        default=None,
        help=f"annealing proposals per start, or per round of the default effort (default {effort.iterations})",
    )
    g.add_argument(
        "--starts",
        type=integer(1),
        default=None,
        help=f"starts: the named masks ({', '.join(effort.start)}), then random ones (default {effort.starts})",
    )
    g.add_argument(
        "--start",
        nargs="+",
        choices=STARTS,
        default=None,
        metavar="NAME",
        help=f"the named start masks, from {', '.join(STARTS)} (surrogate: the optimum of the teacher's "
        f"segment errors, found without block-stack forwards; default {' '.join(effort.start)})",
    )
    g.add_argument(
        "--kicks",
        type=integer(0),
        default=None,
        help=f"perturb-and-climb rounds after hill climbing (default {effort.kicks})",
    )
    g.add_argument(
        "--reach",
        type=integer(0),
        default=None,
        help="hill climbing moves a computed step at most this far, 0: anywhere (default "
        f"{'about 4%% of the steps, at least 1' if effort.reach is None else effort.reach})",
    )
    g.add_argument(
        "--screen",
        type=number(0.0, strict=True, most=1.0),
        default=None,
        help="share of the calibration prompts that ranks hill-climbing moves before the best "
        f"{effort.confirm} are scored on all of them; 1: no screening (default {effort.screen})",
    )
    g.add_argument(
        "--max-forwards",
        type=number(0.0, strict=True),
        default=None,
        help="the search's cap in transformer forwards per calibration prompt, its full-compute teacher and "
        "reference losses included: it never spends more and keeps the best plan found (default: 7 K "
        "for the default effort, none for local, annealed, thorough and long)",
    )
    p.set_defaults(base_effort=effort)
    g.add_argument(
        "--batch-candidates",
        type=integer(1),
        default=1,
        help="hill-climbing neighbours evaluated together in one batched forward (default 1: off)",
    )
    g.add_argument(
        "--no-hill-climb",
        action="store_true",
        help="skip hill climbing (K*B neighbours a round: the bulk of a search at large K)",
    )
    g.add_argument("--forced-prefix", type=integer(0), default=0, help="first steps that always compute (default 0)")
    if rule:
        g.add_argument(
            "--rule",
            choices=RULES,
            default=None if choose else "repeat",
            help="how reused steps read the cache: repeat, or extrapolate(2) in sigma (default: "
            + ("the search chooses among them, within its cap)" if choose else "repeat)"),
        )
    g.add_argument(
        "--search-rules", action="store_true", help="search the reuse rule of every step jointly with the mask"
    )
    g.add_argument(
        "--state-mb",
        type=number(0),
        default=1024.0,
        help="memory for stored prefix states (prefix reuse; default 1024 MB; raise it on a large GPU)",
    )
    if checkpoint:
        g.add_argument(
            "--checkpoint",
            type=Path,
            default=None,
            help="save the evaluations here as they come (default: next to --out)",
        )
        g.add_argument("--checkpoint-every", type=integer(1), default=25, help="evaluations between checkpoint writes")
        g.add_argument(
            "--resume",
            action="store_true",
            help="continue an interrupted search from --checkpoint (same final plan as an uninterrupted run)",
        )


def add_progress_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def search_config(a: argparse.Namespace) -> SearchConfig:
    """The named (or the command's) effort, with the options given on the command line."""
    base = EFFORTS[a.effort] if a.effort else a.base_effort
    given = {
        k: getattr(a, k)
        for k in ("iterations", "starts", "kicks", "reach", "screen", "max_forwards")
        if getattr(a, k) is not None
    } | ({"start": tuple(a.start)} if a.start else {})
    choose = CHOICE if getattr(a, "rule", "repeat") is None and not a.search_rules else ()
    return dataclasses.replace(
        base,
        **given,
        forced_prefix=a.forced_prefix,
        seed=a.seed,
        choose=choose,
        rules=RULES if a.search_rules else (),
        hill_climb=base.hill_climb and not a.no_hill_climb,
        checkpoint_every=getattr(a, "checkpoint_every", 25),
        batch_candidates=a.batch_candidates,
    )


def call_kwargs(a: argparse.Namespace) -> dict:
    """Pipeline call arguments from --height/--width/--guidance-scale/--negative-prompt and --call KEY=VALUE
    (each checked by :func:`budcache.cli.checks.check_call`)."""
    kwargs = {
        k: v
        for k, v in dict(
            height=a.height, width=a.width, guidance_scale=a.guidance_scale, negative_prompt=a.negative_prompt
        ).items()
        if v is not None
    }
    for item in a.call:
        key, _, value = item.partition("=")
        try:
            kwargs[key] = json.loads(value)
        except json.JSONDecodeError:
            kwargs[key] = value
    return kwargs
