"""``budcache frontier``: plans for every budget in one run on any model source, and the held-out
quality-vs-budget curve beside the uniform mask and plain B-step sampling (the source's own solver and AB2 on its
B-step sigmas)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from ..plan import uniform_mask
from ..planset import PlanSet
from ..sampling.solver import AB2
from ..search import SearchConfig, search_frontier
from ..source import Source
from . import metrics, plots
from .compare import static_outputs
from .report import Report


@torch.no_grad()
def frontier(
    source: Source,
    budgets: Sequence[int],
    out: Path,
    config: SearchConfig = SearchConfig(),
    progress: bool = True,
    max_state_mb: float = 1024.0,
    rule: str = "repeat",
) -> list[dict]:
    """Search every budget under the reuse ``rule`` (see :func:`budcache.search.search_frontier`; the uniform
    mask reuses by the same rule), score each plan on the
    held-out set (latent PSNR; where the source decodes, also image PSNR and SSIM in ``row["image"]``), and write
    ``plan_B<b>.json``, the plan set of them all ``plans.json`` (for ``budcache.apply(pipe, plan_set)``),
    ``frontier.json`` and ``frontier.png`` to ``out``."""
    source.check_one_size("frontier")
    out.mkdir(parents=True, exist_ok=True)
    plans, cost = search_frontier(source, budgets, config, progress, max_state_mb, rule)
    k = source.num_steps
    full, t_full = metrics.timed(lambda: static_outputs(source, "eval", source.solver, [1] * k, "repeat"), repeats=1)
    report = Report(source, full, t_full)
    rows, images = [], None
    for b, plan in plans.items():
        plan.save(out / f"plan_B{b}.json")
        n = full.shape[0]
        solver, fewer = source.solver_for(plan.sigmas), source.fewer(b)
        outputs = {
            "budcache": (static_outputs(source, "eval", solver, plan.mask, plan.step_rules), rule),
            "uniform mask": (static_outputs(source, "eval", solver, uniform_mask(k, b), rule), rule),
            f"plain {fewer.name}": (static_outputs(source, "eval", fewer, [1] * b, "repeat"), "-"),
            "plain AB2": (static_outputs(source, "eval", AB2(fewer.sigmas), [1] * b, "repeat"), "-"),
        }
        for method, (x, label) in outputs.items():
            report.add(b, method, label, x, [b] * n)
        psnr = {r.method: r.psnr for r in report.rows[-len(outputs) :]}
        row = {"budget": b, "rule": rule, "mask": plan.strip, "calibration_loss": plan.record.objective, **psnr}
        if source.decode is not None:  # a pipeline that decodes: image PSNR / SSIM beside the latents'
            if images is None:
                images = source.decode(full)
            row["image"] = {
                m: {k: v for k, v in metrics.report(source.decode(x), images).items() if k != "mse"}
                for m, (x, _) in outputs.items()
            }
        rows.append(row)
    PlanSet(plans.values()).save(out / "plans.json")
    (out / "frontier.json").write_text(json.dumps({"rows": rows, **cost}, indent=1))
    plots.plot_frontier(rows, out / "frontier.png")
    return rows
