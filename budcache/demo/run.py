"""``budcache demo``: search plans for a few budgets on the demo model and compare them honestly."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .. import metrics, plots
from ..plan import CachePlan, uniform_mask
from ..sampler import euler, linear_sigmas, sample
from ..solvers import plain_solvers
from ..search import Evaluator, SearchConfig, SearchResult, search_plan
from .model import DigitsFlux, load_demo_model, unpack
from .problem import demo_batches, demo_denoisers, demo_inputs

HELD_OUT_SEED_OFFSET = 10_000
VALIDATION_SEED_OFFSET = 5_000


def search_demo_plan(
    model: DigitsFlux,
    steps: int,
    budget: int,
    reuse: str = "residual",
    calibration: int = 32,
    config: SearchConfig = SearchConfig(),
    progress: bool = True,
    rule: str = "repeat",
    checkpoint: Path | None = None,
    resume: bool = False,
    shard: tuple[int, int] = (0, 1),
) -> tuple[CachePlan, SearchResult]:
    """Stage-1 search on the demo model with ``calibration`` samples drawn from ``config.seed``;
    a predictive rule is validated on as many other samples against ``repeat``. ``shard`` =
    (rank, world size): this process's share of the samples under ``torch.distributed``."""
    rank, world = shard
    noise, labels = demo_inputs(calibration, config.seed)
    with demo_denoisers(model, reuse) as make:
        def evaluator(noise, labels):
            return Evaluator(demo_batches(make, noise[rank::world], labels[rank::world]), linear_sigmas(steps),
                             rule=rule, rules_in_play=config.rules)

        predictive = rule != "repeat" or bool(config.rules)
        validation = evaluator(*demo_inputs(calibration, config.seed + VALIDATION_SEED_OFFSET)) if predictive else None
        return search_plan(
            evaluator(noise, labels), budget, reuse=reuse, model=model.transformer, config=config,
            euler_sigmas=linear_sigmas(budget), validation=validation, progress=progress,
            checkpoint=checkpoint, resume=resume,
        )


def align_demo_plan(model: DigitsFlux, plan: CachePlan, calibration: int = 16, validation: int = 32, seed: int = 0,
                    config=None, progress: bool = True):
    """Stage 2 on the demo model: the plan's sigmas learned on ``calibration`` samples, the best kept
    on ``validation`` other ones."""
    from ..align import AlignConfig, align

    plan.check_model(model.transformer)
    with demo_denoisers(model, plan.reuse) as make:
        return align(plan, demo_batches(make, *demo_inputs(calibration, seed)),
                     demo_batches(make, *demo_inputs(validation, seed + VALIDATION_SEED_OFFSET)),
                     config or AlignConfig(), progress=progress)


def evaluate_plans(model: DigitsFlux, plans: dict[str, CachePlan], held_out: int = 100, seed: int = 0) -> dict:
    """Held-out comparison against full compute of plans for one budget (keyed by a label), the
    uniform mask under each plan's rule, and every plain B-step solver; speedups measured in
    this run."""
    noise, labels = demo_inputs(held_out, seed + HELD_OUT_SEED_OFFSET)
    first = next(iter(plans.values()))
    k, b = first.num_steps, first.budget
    for plan in plans.values():
        plan.check_model(model.transformer)
        plan.check_steps(k)
        if plan.budget != b:
            raise ValueError(f"plans compared together need one budget, got {b} and {plan.budget}")
    sigmas = first.sigmas or linear_sigmas(k)
    velocity = lambda x, s: model(x, torch.tensor(s), labels)  # noqa: E731
    full, t_full = metrics.timed(lambda: euler(velocity, noise, sigmas))
    rows, speedup, executions, masks = {}, {}, {}, {}
    for label, plan in plans.items():
        name = f"plan ({label})"
        with demo_denoisers(model, plan.reuse) as make:
            denoiser = make(labels)
            rows[name] = sample(denoiser, noise, sigmas, plan.mask, plan.step_rules)
            executions[name], masks[name] = denoiser.executions, plan.strip
            _, t_plan = metrics.timed(lambda: sample(denoiser, noise, sigmas, plan.mask, plan.step_rules))
            speedup[name] = t_full / t_plan
            rows[f"uniform mask ({plan.rule})"] = sample(make(labels), noise, sigmas, uniform_mask(k, b), plan.rule)
    _, t_fewer = metrics.timed(lambda: euler(velocity, noise, linear_sigmas(b)))
    speedup[f"plain {b}-step Euler"] = t_full / t_fewer
    rows.update(plain_solvers(velocity, noise, b))
    ref = unpack(full)
    return {
        "budget": b,
        "steps": k,
        "masks": masks,
        "block_stack_executions": executions,
        "speedup": {**speedup, "ideal": k / b},
        "metrics": {name: metrics.report(unpack(x), ref) for name, x in rows.items()},
        "images": {"full": ref, **{name: unpack(x) for name, x in rows.items()}},
    }


def _table(results: list[dict]) -> str:
    head = f"{'B/K':>6} {'method':<28} {'speedup':>8} {'MSE':>10} {'PSNR':>7} {'SSIM':>7}"
    lines = [head, "-" * len(head)]
    for r in results:
        for name, m in r["metrics"].items():
            speed = r["speedup"].get(name)
            s = f"{speed:7.2f}x" if speed is not None else f"{'':>8}"
            lines.append(
                f"{r['budget']:>3}/{r['steps']:<2} {name:<28} {s} {m['mse']:10.3e} {m['psnr']:7.2f} {m['ssim']:7.4f}"
            )
    return "\n".join(lines)


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
) -> list[dict]:
    """The main job: search a plan per budget and rule, compare, and write plans, a table, an
    image grid and plots to ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    model = load_demo_model()
    results, histories = [], {}
    for b in budgets:
        plans = {}
        for rule in rules:
            plan, result = search_demo_plan(model, steps, b, reuse, calibration, config, progress, rule)
            plan.save(out / f"plan_B{b}_{rule}.json")
            plots.plot_plan(plan, out / f"plan_B{b}_{rule}.png")
            histories[f"B={b} {rule}"] = result
            kept = "per-step rules" if plan.rules is not None else plan.rule
            plans[rule if kept == rule else f"{rule} -> {kept}"] = plan
            print(f"B={b} {rule}: {plan.strip} (kept rule: {plan.rule})  search {plan.record.seconds:.1f}s, "
                  f"{plan.record.evaluations} masks, {plan.record.forwards} forwards "
                  f"({plan.record.forwards_without_prefix_reuse} without prefix reuse)", flush=True)
        results.append(evaluate_plans(model, plans, held_out, config.seed))
    plots.plot_history(histories, out / "search_history.png")
    grid = [("full", results[0]["images"]["full"])]
    for r in results:
        grid += [(f"{name} B={r['budget']}", imgs) for name, imgs in r["images"].items()
                 if name.startswith("plan") or name == f"plain {r['budget']}-step AB2"]
    plots.image_grid(grid, out / "samples.png")
    write_report(results, out)
    return results


def write_report(results: list[dict], out: Path) -> None:
    """Print the table and write ``table.txt`` and ``results.json`` to ``out``."""
    table = _table(results)
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.txt").write_text(table + "\n")
    summary = [{k: v for k, v in r.items() if k != "images"} for r in results]
    (out / "results.json").write_text(json.dumps(summary, indent=1))


def compare_plans(paths: list[Path], out: Path, held_out: int = 100, seed: int = 0) -> list[dict]:
    """``budcache compare``: saved plans for the demo model against uniform masks and every plain
    solver at the same NFE, on held-out samples."""
    model = load_demo_model()
    groups: dict[int, dict[str, CachePlan]] = {}
    for path in paths:
        plan = CachePlan.load(path)
        groups.setdefault(plan.budget, {})[Path(path).stem] = plan
    results = [evaluate_plans(model, plans, held_out, seed) for _, plans in sorted(groups.items())]
    write_report(results, out)
    return results
