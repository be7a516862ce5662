"""``budcache compare``: every caching policy at matched NFE, one sampler, one reuse rule.

For each budget B and each shared reuse rule, every policy picks which steps compute and the
same cached sampler runs them: budcache's searched plan, the uniform / FORA interval,
TaylorSeer's warm-up + interval schedule, MagCache (residual-norm ratios of one full run,
threshold scanned to reach B), LeMiCa (single-segment edge errors, lexicographic-minimax path of
B nodes) and TeaCache (per-sample, threshold-driven; two protocols: one global threshold
calibrated on the calibration samples, reporting the NFE spread, and a per-sample threshold that
hits B). Plain B-step Euler and AB2 (no cache) stand beside them. Everything is scored on
held-out samples, never the calibration ones, against full K-step compute with the same noise.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from .. import baselines as policies
from ..align import AlignConfig, align
from ..baselines import teacache
from ..plan import CachePlan, uniform_mask
from ..sampling.loop import StepInfo, sample
from ..sampling.multistep import require_differentiable
from ..sampling.plain import SCHEDULERS, adams_bashforth2, scheduler_sample
from ..sampling.reschedule import with_sigmas
from ..sampling.solver import Solver
from ..search import SearchConfig, search_source
from ..search.plan_search import source_evaluator
from ..source import Source
from . import metrics
from .report import Report, Row


def static_outputs(
    source: Source,
    which: str,
    sigmas: Sequence[float] | Solver,
    mask: Sequence[int],
    rule,
    reuse: str | None = None,
    executions: list[int] | None = None,
) -> torch.Tensor:
    """The outputs of a static plan (mask, rules, sigmas) on a set of the source, through the one
    loop; ``executions`` receives, per sample, the block-stack executions measured."""
    restarts = source.restarts if len(mask) == source.num_steps else ()
    out = []
    for b in source.batches(which, reuse):
        before = b.denoiser.executions
        out.append(sample(b.denoiser, b.noise, sigmas, mask, rule, restarts=restarts))
        if executions is not None:
            executions += [b.denoiser.executions - before] * b.noise.shape[0]
    return torch.cat(out)


def _same_scheduler(scheduler, solver: Solver) -> bool:
    """Whether ``solver`` steps with a scheduler of this class and config."""
    own = getattr(solver, "scheduler", None)
    return type(own) is type(scheduler) and dict(own.config) == dict(scheduler.config)


def _ab2(source: Source, which: str, sigmas: Sequence[float]) -> torch.Tensor:
    return torch.cat(
        [
            adams_bashforth2(lambda x, s, d=b.denoiser: d.compute(x, s)[0], b.noise, sigmas)
            for b in source.batches(which)
        ]
    )


def _teacache(source: Source, signal: list, which: str, rescale, thresholds: Sequence[float], rule: str):
    """(final latents, NFE) of every sample of a set, one threshold per sample."""
    out, start = [], 0
    for b in source.batches(which):
        n = b.noise.shape[0]
        out.append(
            teacache.sample(b.denoiser, signal, b.noise, source.solver, rescale, thresholds[start : start + n], rule)
        )
        start += n
    return torch.cat([x for x, _ in out]), torch.cat([nfe for _, nfe in out])


def _magcache_ratios(source: Source) -> list[float]:
    """Cached quantity of every step of one full-compute run on the calibration samples."""
    caches: list[list[torch.Tensor]] = [[] for _ in range(source.num_steps)]
    for b in source.batches("calib"):

        def keep(info: StepInfo) -> None:
            caches[info.step].append(info.state.history[-1][1])

        sample(b.denoiser, b.noise, source.solver, [1] * source.num_steps, restarts=source.restarts, callback=keep)
    return policies.magcache_ratios([torch.cat(c) for c in caches])


def _per_sample_thresholds(
    source: Source,
    signal: list,
    rescale,
    thresholds: Sequence[float],
    runs: list,
    budget: int,
    rule: str,
    rounds: int = 12,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, a threshold with NFE == budget: bracketed on the grid, then bisected (all samples
    in one batched run per round). Samples that never hit it keep their closest NFE <= budget
    (else the closest above)."""
    grid = torch.tensor(thresholds, dtype=torch.float64)
    nfes = torch.stack([nfe for _, nfe in runs])  # (thresholds, samples); NFE falls as the threshold grows
    finals = torch.stack([x for x, _ in runs])
    n = nfes.shape[1]
    score = lambda nfe: (nfe > budget).double() * 1e3 + (nfe - budget).abs()  # noqa: E731
    best = score(nfes).argmin(0)
    x, nfe = finals[best, torch.arange(n)], nfes[best, torch.arange(n)]
    lo = torch.stack([grid[(nfes[:, j] > budget)].max() if (nfes[:, j] > budget).any() else grid[0] for j in range(n)])
    hi = torch.stack([grid[(nfes[:, j] < budget)].min() if (nfes[:, j] < budget).any() else grid[-1] for j in range(n)])
    for _ in range(rounds):
        todo = nfe != budget
        if not todo.any():
            break
        mid = (lo + hi) / 2
        x_mid, nfe_mid = _teacache(source, signal, "eval", rescale, mid.tolist(), rule)
        better = todo & (score(nfe_mid) < score(nfe))
        x = torch.where(better.view(-1, *[1] * (x.dim() - 1)), x_mid, x)
        nfe = torch.where(better, nfe_mid, nfe)
        lo = torch.where(nfe_mid > budget, mid, lo)
        hi = torch.where(nfe_mid < budget, mid, hi)
    return x, nfe


@torch.no_grad()
def compare(
    source: Source,
    budgets: Sequence[int],
    rules: Sequence[str] = ("repeat", "extrapolate"),
    config: SearchConfig = SearchConfig(),
    thresholds: Sequence[float] | None = None,
    progress: bool = True,
    align_epochs: int = 0,
    magcache: str = "flux",
    max_state_mb: float = 1024.0,
) -> tuple[list[Row], dict[str, torch.Tensor]]:
    """Rows for every (budget, rule, policy), and outputs per ``"B=<b> <method> [rule]"`` (plus ``"full"``).

    ``align_epochs`` > 0 adds stage 2: budcache's plan with its schedule aligned, and plain B-step
    Euler with its B-step schedule aligned the same way (both on the calibration samples).
    ``magcache``: the MagCache preset whose max skip and retention are kept while its threshold
    is scanned (``policies.MAGCACHE_PRESETS``); ``max_state_mb``: memory for stored prefix states."""
    source.check_one_size("compare")
    with teacache.indicator(source.model) as signal:
        return _compare(
            source, signal, budgets, rules, config, thresholds, progress, align_epochs, magcache, max_state_mb
        )


def _compare(
    source: Source,
    signal: list,
    budgets: Sequence[int],
    rules: Sequence[str],
    config: SearchConfig,
    thresholds: Sequence[float] | None,
    progress: bool,
    align_epochs: int,
    magcache: str,
    max_state_mb: float,
) -> tuple[list[Row], dict[str, torch.Tensor]]:
    k, sigmas = source.num_steps, source.solver
    if align_epochs:
        require_differentiable(source.solver)
    thresholds = list(thresholds or torch.logspace(-3, 0.5, 40).tolist())
    full, t_full = metrics.timed(lambda: static_outputs(source, "eval", sigmas, [1] * k, "repeat"))
    report = Report(source, full, t_full)
    add = report.add
    n_eval = full.shape[0]
    rescale = teacache.fit_rescaler(
        [(b.denoiser, b.noise) for b in source.batches("calib")], signal, sigmas, restarts=source.restarts
    )
    ratios = _magcache_ratios(source)
    bar = tqdm(total=len(rules) * len(budgets), desc="compare", disable=not progress)
    for rule in rules:
        evaluate = source_evaluator(source, "calib", rule=rule, config=config, max_state_mb=max_state_mb)
        weights = policies.lemica_edge_weights(source_evaluator(source, "calib", rule=rule, metric="l1"))
        n_calib = sum(b.noise.shape[0] for b in source.batches("calib"))
        tea_calib = [_teacache(source, signal, "calib", rescale, [t] * n_calib, rule) for t in thresholds]
        tea_eval = [_teacache(source, signal, "eval", rescale, [t] * n_eval, rule) for t in thresholds]
        for b in budgets:
            bar.set_postfix(rule=rule, B=b)
            plan, _ = search_source(source, b, config=config, progress=False, evaluate=evaluate, fallback=False)
            if plan.record.interrupted:  # Ctrl-C / SIGTERM stops the comparison, not just this search
                raise KeyboardInterrupt
            masks = {"budcache": (plan.mask, plan.step_rules if plan.rules else rule, "")}
            mask, note = policies.fora_for_budget(k, b)
            masks["uniform / FORA"] = (mask, rule, note)
            masks["TaylorSeer"] = (policies.taylorseer_for_budget(k, b), rule, "")
            preset = policies.MAGCACHE_PRESETS[magcache]
            mask, info = policies.magcache_for_budget(
                ratios, k, b, max_skip=int(preset["max_skip"]), retention=preset["retention"]
            )
            masks["MagCache"] = (mask, rule, "" if info["exact"] else f"closest reachable NFE {sum(mask)}")
            masks["LeMiCa"] = (policies.lemica_path(weights, k, b), rule, "")
            schedules = dict.fromkeys(masks, sigmas)
            if align_epochs:
                aligned, result = align(
                    plan,
                    source.batches("calib"),
                    config=AlignConfig(epochs=align_epochs),
                    progress=False,
                    restarts=source.restarts,
                    solver=source.solver,
                )
                if result.interrupted:
                    raise KeyboardInterrupt
                masks["budcache + aligned sigmas"] = masks["budcache"]
                schedules["budcache + aligned sigmas"] = source.solver_for(aligned.sigmas)
            for method, (mask, mask_rule, note) in masks.items():
                x, seconds = metrics.timed(lambda: static_outputs(source, "eval", schedules[method], mask, mask_rule))
                add(
                    b,
                    method,
                    rule,
                    x,
                    [sum(mask)] * n_eval,
                    seconds,
                    mask="".join("#" if m else "." for m in mask),
                    note=note,
                )
            # TeaCache P1: one global threshold, mean NFE on the calibration samples closest to B
            means = [float(nfe.float().mean()) for _, nfe in tea_calib]
            best = min(range(len(thresholds)), key=lambda i: (abs(means[i] - b), means[i]))
            x, nfe = tea_eval[best]
            add(
                b,
                "TeaCache (global threshold)",
                rule,
                x,
                nfe.tolist(),
                note=f"threshold {thresholds[best]:.3g}, calibration mean NFE {means[best]:.2f}",
            )
            # TeaCache P2: per-sample threshold hitting B (else the closest NFE <= B)
            x, nfe = _per_sample_thresholds(source, signal, rescale, thresholds, tea_eval, b, rule)
            add(
                b,
                "TeaCache (per-sample threshold)",
                rule,
                x,
                nfe.tolist(),
                note=f"{int((nfe == b).sum())}/{n_eval} samples exactly at B",
            )
            bar.update()
    bar.close()
    for b in budgets:
        fewer = source.fewer(b)
        x, seconds = metrics.timed(lambda: static_outputs(source, "eval", fewer, [1] * b, "repeat"))
        add(b, f"plain {b}-step {fewer.name}", "-", x, [b] * n_eval, seconds)
        x, seconds = metrics.timed(lambda: _ab2(source, "eval", fewer.sigmas))
        add(b, f"plain {b}-step AB2", "-", x, [b] * n_eval, seconds)
        if align_epochs:
            plain = CachePlan(num_steps=b, budget=b, mask=[1] * b, sigmas=fewer.sigmas)
            aligned, result = align(
                plain,
                source.batches("calib"),
                config=AlignConfig(epochs=align_epochs),
                teacher_sigmas=source.sigmas,
                progress=False,
                solver=source.solver,
            )
            if result.interrupted:
                raise KeyboardInterrupt
            solver = source.solver_for(aligned.sigmas)
            x, seconds = metrics.timed(lambda: static_outputs(source, "eval", solver, [1] * b, "repeat"))
            add(b, f"plain {b}-step {fewer.name}, aligned sigmas", "-", x, [b] * n_eval, seconds)
    return report.rows, report.images


@torch.no_grad()
def compare_plans(source: Source, plans: Sequence[tuple[str, CachePlan]]) -> tuple[list[Row], dict[str, torch.Tensor]]:
    """Saved or fresh plans (``(label, plan)`` pairs) on the source's held-out set, each beside the uniform
    mask under its rule and every plain solver at its NFE (Euler, AB2 and diffusers' schedulers);
    speedups measured in this run. Plans of several budgets are grouped by budget."""
    k = source.num_steps
    for _, plan in plans:
        plan.check_model(source.model)
        plan.check_steps(k)
    full, t_full = metrics.timed(lambda: static_outputs(source, "eval", source.solver, [1] * k, "repeat"))
    report = Report(source, full, t_full)
    n_eval = full.shape[0]
    for b in sorted({p.budget for _, p in plans}):
        uniform: set[tuple] = set()
        for label, plan in ((n, p) for n, p in plans if p.budget == b):
            sigmas, nfe = source.solver_for(plan.sigmas), []
            solver = with_sigmas(sigmas, None, plan.model_sigmas)  # the plan's model times where it has them
            x = static_outputs(source, "eval", solver, plan.mask, plan.step_rules, plan.reuse, nfe)
            _, seconds = metrics.timed(
                lambda: static_outputs(source, "eval", solver, plan.mask, plan.step_rules, plan.reuse)
            )
            rule = plan.rule if plan.rules is None else "per step"
            report.add(b, f"plan ({label})", rule, x, nfe, seconds, mask=plan.strip, note=f"{plan.reuse} reuse")
            if (plan.rule, plan.reuse, tuple(sigmas.sigmas)) not in uniform:
                uniform.add((plan.rule, plan.reuse, tuple(sigmas.sigmas)))
                x = static_outputs(source, "eval", sigmas, uniform_mask(k, b), plan.rule, plan.reuse)
                report.add(
                    b,
                    "uniform mask",
                    plan.rule,
                    x,
                    [b] * n_eval,
                    mask=CachePlan(k, b, uniform_mask(k, b)).strip,
                    note=f"{plan.reuse} reuse",
                )
        fewer = source.fewer(b)
        x, seconds = metrics.timed(lambda: static_outputs(source, "eval", fewer, [1] * b, "repeat"))
        report.add(b, f"plain {b}-step {fewer.name}", "-", x, [b] * n_eval, seconds)
        report.add(b, f"plain {b}-step AB2", "-", _ab2(source, "eval", fewer.sigmas), [b] * n_eval)
        for name, make in SCHEDULERS.items():
            if _same_scheduler(make(), fewer):
                continue  # the source's own solver with B steps: already the row above
            x = torch.cat(
                [
                    scheduler_sample(make(), lambda x, s, d=batch.denoiser: d.compute(x, s)[0], batch.noise, b)
                    for batch in source.batches("eval")
                ]
            )
            report.add(b, f"{name} {b}", "-", x, [b] * n_eval)
    return report.rows, report.images
