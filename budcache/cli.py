"""Command line: ``budcache search | show | compare | demo``."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from .plan import RULES, CachePlan, PlanError
from .align import AlignConfig
from .search import SearchConfig

DEMO_EFFORT = SearchConfig(iterations=100, starts=1, kicks=0)  # `budcache demo` must finish in minutes


def _add_pipeline_options(p: argparse.ArgumentParser) -> None:
    """Options that load and call a diffusers pipeline (search and compare)."""
    p.add_argument("--pipeline", default=None, metavar="PATH_OR_ID",
                   help="a diffusers pipeline (local folder or hub id) instead of the demo model")
    p.add_argument("--prompts", type=Path, default=None, help="calibration prompts for --pipeline (.txt, .jsonl, .csv)")
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--guidance-scale", type=float, default=None)
    p.add_argument("--negative-prompt", default=None)
    p.add_argument("--call", action="append", default=[], metavar="KEY=VALUE",
                   help="another pipeline call argument (value parsed as JSON when it can be), repeatable")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                   help="model dtype (default bfloat16 on a GPU, float32 on CPU)")
    p.add_argument("--device", default=None, help="torch device (default cuda when available)")
    p.add_argument("--cpu-offload", action="store_true", help="enable_model_cpu_offload for large models")
    p.add_argument("--state-mb", type=float, default=1024.0,
                   help="memory for stored prefix states (prefix reuse; default 1024 MB; raise it on a large GPU)")


def _add_search_options(
    p: argparse.ArgumentParser, effort: SearchConfig = SearchConfig(), calib: int = 32, rule: bool = True,
    checkpoint: bool = False,
) -> None:
    p.add_argument("--steps", type=int, default=28, help="denoising steps K (default 28)")
    p.add_argument("--reuse", choices=("residual", "output"), default="residual",
                   help="what reused steps take from the cache (default residual)")
    p.add_argument("--calib", type=int, default=calib, help=f"calibration samples of the demo model (default {calib})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--iterations", type=int, default=effort.iterations,
                   help=f"annealing proposals per start (default {effort.iterations})")
    p.add_argument("--starts", type=int, default=effort.starts,
                   help=f"annealing starts: the uniform mask, then random ones (default {effort.starts})")
    p.add_argument("--kicks", type=int, default=effort.kicks,
                   help=f"perturb-and-climb rounds after hill climbing (default {effort.kicks})")
    p.add_argument("--batch-candidates", type=int, default=1,
                   help="hill-climbing neighbours evaluated together in one batched forward (default 1: off)")
    p.add_argument("--no-hill-climb", action="store_true",
                   help="skip hill climbing (K*B neighbours a round: the bulk of a search at large K)")
    p.add_argument("--forced-prefix", type=int, default=0, help="first steps that always compute (default 0)")
    if rule:
        p.add_argument("--rule", choices=RULES, default="repeat",
                       help="how reused steps read the cache: repeat, or extrapolate(2) in sigma (default repeat)")
    p.add_argument("--search-rules", action="store_true",
                   help="search the reuse rule of every step jointly with the mask")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    if checkpoint:
        p.add_argument("--checkpoint", type=Path, default=None,
                       help="save the evaluations here as they come (default: next to --out)")
        p.add_argument("--checkpoint-every", type=int, default=25, help="evaluations between checkpoint writes")
        p.add_argument("--resume", action="store_true",
                       help="continue an interrupted search from --checkpoint (same final plan as an uninterrupted run)")


def _config(a: argparse.Namespace) -> SearchConfig:
    return SearchConfig(iterations=a.iterations, starts=a.starts, kicks=a.kicks, forced_prefix=a.forced_prefix, seed=a.seed,
                        rules=RULES if a.search_rules else (), hill_climb=not a.no_hill_climb,
                        checkpoint_every=getattr(a, "checkpoint_every", 25), batch_candidates=a.batch_candidates)


def _call_kwargs(a: argparse.Namespace) -> dict:
    """Pipeline call arguments from --height/--width/--guidance-scale/--negative-prompt and --call KEY=VALUE."""
    kwargs = {k: v for k, v in dict(height=a.height, width=a.width, guidance_scale=a.guidance_scale,
                                      negative_prompt=a.negative_prompt).items() if v is not None}
    for item in a.call:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--call expects KEY=VALUE, got {item!r}")
        try:
            kwargs[key] = json.loads(value)
        except json.JSONDecodeError:
            kwargs[key] = value
    return kwargs


def load_pipeline(path: str, dtype: str | None, device: str | None, offload: bool):
    """A diffusers pipeline from a local folder or hub id, in ``dtype`` on ``device``."""
    import torch
    from diffusers import DiffusionPipeline

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, dtype or ("bfloat16" if device != "cpu" else "float32"))
    pipe = DiffusionPipeline.from_pretrained(path, dtype=dtype)
    if offload:
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    return pipe


def _calibrate_shard(pipe, path: Path, a: argparse.Namespace, seed: int, rank: int, world: int, kwargs: dict):
    """This rank's share of the prompts in ``path`` (prompt i keeps seed ``seed + i``)."""
    from . import calibrate
    from .prompts import read_prompts

    prompts = read_prompts(path)
    if len(prompts) < world:
        raise SystemExit(f"{path}: {len(prompts)} prompts for {world} processes; give each process at least one")
    mine = range(rank, len(prompts), world)
    return calibrate(pipe, [prompts[i] for i in mine], a.steps, seeds=[seed + i for i in mine],
                     progress=not a.no_progress, **kwargs)


def _search_pipeline(a: argparse.Namespace, rank: int = 0, world: int = 1):
    from . import search

    if a.prompts is None:
        raise SystemExit("--pipeline needs --prompts FILE (.txt, .jsonl or .csv) with calibration prompts")
    device = a.device or (f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if world > 1 else None)
    pipe = load_pipeline(a.pipeline, a.dtype, device, a.cpu_offload)
    pipe.set_progress_bar_config(disable=True)
    kwargs = _call_kwargs(a)
    calib = _calibrate_shard(pipe, a.prompts, a, a.seed, rank, world, kwargs)
    validation = None
    if a.validation_prompts is not None:
        validation = _calibrate_shard(pipe, a.validation_prompts, a, a.seed + 10_000, rank, world, kwargs)
    return search(calib, a.budget, reuse=a.reuse, rule=a.rule, config=_config(a), validation=validation,
                  max_state_mb=a.state_mb, history=None if rank else a.history, progress=not a.no_progress,
                  checkpoint=a.checkpoint, resume=a.resume)


def _pipeline_problem(a: argparse.Namespace):
    from . import calibrate, compare
    from .prompts import read_prompts

    if a.prompts is None or a.held_out_prompts is None:
        raise SystemExit("compare --pipeline needs --prompts (calibration) and --held-out-prompts FILE")
    pipe = load_pipeline(a.pipeline, a.dtype, a.device, a.cpu_offload)
    pipe.set_progress_bar_config(disable=True)
    kwargs, progress = _call_kwargs(a), not a.no_progress
    calib = calibrate(pipe, read_prompts(a.prompts), a.steps, seed=a.seed, progress=progress, **kwargs)
    held_out = calibrate(pipe, read_prompts(a.held_out_prompts), a.steps, seed=a.seed + compare.HELD_OUT_SEED_OFFSET,
                         progress=progress, **kwargs)
    return compare.pipeline_problem(calib, held_out)


def cmd_search(a: argparse.Namespace) -> None:
    if not 1 <= a.budget <= a.steps:
        raise SystemExit(f"--budget must be between 1 and --steps ({a.steps}), got {a.budget}")
    a.history = a.history or a.out.with_suffix(".history.png")
    a.checkpoint = a.checkpoint or a.out.with_suffix(".checkpoint.json")
    if a.resume and not a.checkpoint.exists():
        raise SystemExit(f"--resume: no checkpoint at {a.checkpoint}")
    rank, world = _rank()
    if rank:
        a.no_progress = True
    if a.pipeline is not None:
        plan = _search_pipeline(a, rank, world)
    elif a.model == "demo":
        from . import plots
        from .demo.model import load_demo_model
        from .demo.run import search_demo_plan

        model = load_demo_model()
        plan, result = search_demo_plan(model, a.steps, a.budget, a.reuse, a.calib, _config(a), not a.no_progress,
                                        a.rule, a.checkpoint, a.resume, shard=(rank, world))
        if not rank:
            plots.plot_history({f"B={a.budget}": result}, a.history)
    else:
        raise SystemExit(f"--model {a.model!r}: use --model demo, or --pipeline PATH_OR_ID for a diffusers model")
    if rank:
        return
    plan.save(a.out)
    if plan.record is not None and plan.record.interrupted:
        print("interrupted: saved the best plan found so far", file=sys.stderr)
    print(describe(plan))
    print(f"saved {a.out} and {a.history} (evaluations in {a.checkpoint})")


def describe(plan: CachePlan) -> str:
    lines = [f"mask    {plan.strip}"]
    if plan.rules is not None:
        marks = {"repeat": ".", "extrapolate": "/", "extrapolate2": "^"}
        lines.append("rules   " + "".join("#" if m else marks[r] for m, r in zip(plan.mask, plan.rules))
                     + "   (. repeat, / extrapolate, ^ extrapolate2)")
    lines += [
        f"budget  {plan.budget}/{plan.num_steps} steps compute ({plan.reuse} reuse, "
        f"rule {plan.rule if plan.rules is None else 'per step'}), "
        f"ideal speedup {plan.ideal_speedup:.2f}x",
        f"sigmas  {'pipeline default' if plan.sigmas is None else 'custom, ' + str(len(plan.sigmas)) + ' values'}",
    ]
    if plan.model:
        lines.append(f"model   {plan.model.get('class')} ({plan.model.get('fingerprint')})")
    r = plan.record
    if r is not None:
        refs = [f"searched {r.objective:.4g}"]
        if r.uniform_objective is not None:
            refs.append(f"uniform mask {r.uniform_objective:.4g}")
        if r.euler_objective is not None:
            refs.append(f"plain {plan.budget}-step Euler {r.euler_objective:.4g}")
        if r.repeat_objective is not None and (plan.rule != "repeat" or plan.rules is not None):
            refs.append(f"same mask with repeat {r.repeat_objective:.4g}")
        lines += [
            f"loss    {r.metric} vs the {r.teacher_steps}-step teacher: " + ", ".join(refs),
            f"search  {r.evaluations} masks, {r.forwards} transformer forwards "
            f"({r.forwards_without_prefix_reuse} without prefix reuse), {r.calibration_size} calibration "
            f"samples, seed {r.seed}, {r.seconds:.1f}s" + (", interrupted" if r.interrupted else ""),
        ]
    return "\n".join(lines)


def cmd_show(a: argparse.Namespace) -> None:
    plan = CachePlan.load(a.plan)
    print(json.dumps(plan.to_dict(), indent=1) if a.json else describe(plan))
    if a.png:
        from .plots import plot_plan

        print(f"saved {plot_plan(plan, a.png)}")


def cmd_demo(a: argparse.Namespace) -> None:
    from .demo.run import run_demo

    run_demo(a.out, tuple(a.budgets), a.steps, a.reuse, a.calib, a.held_out, _config(a), not a.no_progress,
             tuple(a.rules))
    print(f"wrote plans, table.txt, results.json, samples.png and plots to {a.out}/")


def _budgets(text: str, steps: int) -> list[int]:
    """``6,8,10,14`` or ``4..20``, each within 1..``steps``."""
    if ".." in text:
        lo, hi = text.split("..")
        budgets = list(range(int(lo), int(hi) + 1))
    else:
        budgets = [int(b) for b in text.split(",") if b.strip()]
    if not budgets or not all(1 <= b <= steps for b in budgets):
        raise SystemExit(f"--budgets must lie in 1..--steps ({steps}), got {text!r}")
    return budgets


def cmd_compare(a: argparse.Namespace) -> None:
    if a.pipeline is None and a.model != "demo":
        raise SystemExit(f"--model {a.model!r}: use --model demo, or --pipeline PATH_OR_ID for a diffusers model")
    if a.plans:
        from .demo.run import compare_plans

        compare_plans(a.plans, a.out, a.held_out, a.seed)
        print(f"wrote table.txt and results.json to {a.out}/")
        return
    from . import compare

    budgets = _budgets(a.budgets, a.steps)
    config = SearchConfig(iterations=a.iterations, starts=a.starts, kicks=a.kicks, seed=a.seed)
    if a.pipeline is not None:
        problem = _pipeline_problem(a)
    else:
        problem = compare.demo_problem(a.calib, a.held_out, a.seed, a.steps)
    with problem as problem:
        rows, images = compare.compare(problem, budgets, tuple(a.rules), config, progress=not a.no_progress,
                                       align_epochs=a.align_epochs, magcache=a.magcache)
    compare.write(rows, images, a.out)
    print(f"wrote table.txt, results.csv, results.json, quality_vs_nfe.png and samples_B*.png to {a.out}/")


def cmd_align(a: argparse.Namespace) -> None:
    from .demo.model import load_demo_model
    from .demo.run import align_demo_plan
    from .plots import plot_alignment

    if a.model != "demo":
        raise SystemExit(f"--model {a.model!r}: align runs on the demo model from the command line; "
                         "use budcache.align(plan, batches) in Python for a calibrated pipeline")
    plan = CachePlan.load(a.plan)
    config = AlignConfig(epochs=a.epochs, lr=a.lr, checkpointing=not a.no_checkpointing)
    aligned, result = align_demo_plan(load_demo_model(), plan, a.calib, a.validation, a.seed, config, not a.no_progress)
    aligned.save(a.out)
    figure = plot_alignment(aligned, result, a.out.with_suffix(".png"))
    v0, v1 = result.validation_loss[0], min(result.validation_loss)
    print(describe(aligned))
    print(f"validation MSE {v0:.4g} -> {v1:.4g} ({10 * math.log10(v0 / v1):+.2f} dB), "
          f"{'kept epoch ' + str(result.best_epoch) if result.improved else 'input schedule kept'}")
    print(f"saved {a.out} and {figure}")


def cmd_frontier(a: argparse.Namespace) -> None:
    from .frontier import demo_frontier

    if a.model != "demo":
        raise SystemExit(f"--model {a.model!r}: frontier runs on the demo model in this version")
    budgets = _budgets(a.budgets, a.steps)
    a.out.mkdir(parents=True, exist_ok=True)
    rows = demo_frontier(a.out, budgets, a.steps, a.calib, a.held_out, _config(a), not a.no_progress)
    for r in rows:
        print(f"B={r['budget']:>2}  {r['mask']}  budcache {r['budcache']:6.2f} dB   uniform {r['uniform mask']:6.2f}   "
              f"Euler {r['plain Euler']:6.2f}")
    print(f"wrote plan_B*.json, frontier.json and frontier.png to {a.out}/")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="budcache", description="Budget-constrained step-level diffusion caching")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice; 1 avoids oversubscription on a busy machine)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("search", help="search a caching plan for a fixed budget")
    p.add_argument("--model", default="demo", help="model to search for (default: the embedded demo model)")
    _add_pipeline_options(p)
    p.add_argument("--validation-prompts", type=Path, default=None,
                   help="held-out prompts on which a predictive --rule must beat repeat (default: the calibration ones)")
    p.add_argument("--budget", type=int, required=True, help="transformer executions B per generation")
    p.add_argument("--out", type=Path, required=True, help="where to write the plan (JSON)")
    p.add_argument("--history", type=Path, default=None, help="search-history plot (default: next to --out)")
    _add_search_options(p, checkpoint=True)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("frontier", help="plans for every budget in one run, and the quality-vs-budget curve")
    p.add_argument("--model", default="demo")
    p.add_argument("--budgets", default="4..20", help="comma list or range (default 4..20)")
    p.add_argument("--held-out", type=int, default=100, help="held-out samples for the curve")
    p.add_argument("--out", type=Path, default=Path("frontier-out"))
    _add_search_options(p, DEMO_EFFORT, calib=16, rule=False)
    p.set_defaults(func=cmd_frontier)

    p = sub.add_parser("align", help="stage 2: learn a plan's sigma schedule by distillation (demo model)")
    p.add_argument("plan", type=Path)
    p.add_argument("--out", type=Path, required=True, help="where to write the aligned plan")
    p.add_argument("--model", default="demo")
    p.add_argument("--calib", type=int, default=16, help="calibration samples (default 16)")
    p.add_argument("--validation", type=int, default=32, help="held-out validation samples (default 32)")
    p.add_argument("--epochs", type=int, default=AlignConfig.epochs)
    p.add_argument("--lr", type=float, default=AlignConfig.lr)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-checkpointing", action="store_true", help="keep every activation (more memory)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_align)

    p = sub.add_parser("show", help="print a plan, optionally plot it")
    p.add_argument("plan", type=Path)
    p.add_argument("--png", type=Path, default=None, help="write the mask over the sigma schedule")
    p.add_argument("--json", action="store_true", help="print the whole plan as JSON")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("compare", help="every caching policy at matched NFE on held-out samples (or saved plans)")
    p.add_argument("plans", type=Path, nargs="*", help="saved plans to score instead (grouped by budget)")
    p.add_argument("--model", default="demo")
    _add_pipeline_options(p)
    p.add_argument("--held-out-prompts", type=Path, default=None, help="evaluation prompts for --pipeline")
    p.add_argument("--magcache", choices=("flux", "wan2.1-1.3b", "diffusers"), default="flux",
                   help="MagCache preset (max skip, retention) kept while its threshold is scanned (default flux)")
    p.add_argument("--align-epochs", type=int, default=0,
                   help="also stage 2: align budcache's plan and plain Euler's B-step schedule (0: skip)")
    p.add_argument("--steps", type=int, default=28)
    p.add_argument("--budgets", default="6,8,10,14", help="comma list or range, e.g. 6,8,10,14 or 4..20")
    p.add_argument("--rules", nargs="+", choices=RULES, default=["repeat", "extrapolate"],
                   help="shared reuse rules: every policy runs under each (default: repeat extrapolate)")
    p.add_argument("--calib", type=int, default=16,
                   help="demo calibration samples (search, thresholds, edge weights); --pipeline uses --prompts")
    p.add_argument("--held-out", type=int, default=100, help="demo held-out samples (never calibration ones)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--iterations", type=int, default=DEMO_EFFORT.iterations)
    p.add_argument("--starts", type=int, default=DEMO_EFFORT.starts)
    p.add_argument("--kicks", type=int, default=DEMO_EFFORT.kicks)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", type=Path, default=Path("compare-out"))
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("demo", help="search plans on the demo model and compare with uniform masks and fewer steps")
    p.add_argument("--out", type=Path, default=Path("demo-out"))
    p.add_argument("--budgets", type=int, nargs="+", default=[6, 8, 10])
    p.add_argument("--held-out", type=int, default=100, help="held-out samples for the comparison")
    p.add_argument("--rules", nargs="+", choices=RULES, default=["repeat", "extrapolate"],
                   help="search a plan under each of these reuse rules (default: repeat extrapolate)")
    _add_search_options(p, DEMO_EFFORT, calib=16, rule=False)
    p.set_defaults(func=cmd_demo)
    return parser


def _rank() -> tuple[int, int]:
    """(rank, world size): under ``torchrun`` the process group is set up here (NCCL on GPUs, else gloo)."""
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def main(argv: list[str] | None = None) -> None:
    a = build_parser().parse_args(argv)
    if a.threads is not None:
        import torch

        torch.set_num_threads(a.threads)
    try:
        a.func(a)
    except PlanError as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
