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

import csv
import importlib.util
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import metrics, plots, policies, teacache
from .align import AlignConfig, align
from .plan import CachePlan
from .sampler import linear_sigmas, sample
from .search import Batch, Evaluator, SearchConfig, search_plan
from .solvers import adams_bashforth2

HELD_OUT_SEED_OFFSET = 10_000


@dataclass
class Row:
    """One method at one budget: its quality against full compute and its NFE per sample."""

    budget: int
    method: str
    rule: str
    nfe_mean: float
    nfe_sd: float
    nfe_min: int
    nfe_max: int
    mse: float
    psnr: float
    ssim: float | None
    lpips: float | None = None
    speedup: float | None = None
    accuracy: float | None = None
    mask: str = ""
    note: str = ""
    extra: dict = field(default_factory=dict)


@dataclass
class Problem:
    """What the comparison needs from a model: calibration and held-out batches and how to score them."""

    steps: int
    sigmas: list[float]
    batches: Callable[[str], list[Batch]]  # "calib" | "eval" -> fresh (denoiser, noise) batches
    fewer_sigmas: Callable[[int], list[float]]  # the schedule plain B-step sampling uses
    signal: list  # TeaCache indicator sink (filled on every transformer call)
    images: Callable[[torch.Tensor], torch.Tensor] | None = None  # latents -> images in [-1, 1]; None: latents
    score: Callable[[torch.Tensor], dict] | None = None  # extra per-method scores (e.g. digit accuracy)


def _nfe(values: Sequence[int] | torch.Tensor) -> dict:
    t = torch.as_tensor(values, dtype=torch.float64)
    return dict(nfe_mean=float(t.mean()), nfe_sd=float(t.std(unbiased=False)), nfe_min=int(t.min()), nfe_max=int(t.max()))


def _static(problem: Problem, which: str, sigmas: Sequence[float], mask: Sequence[int], rule) -> torch.Tensor:
    return torch.cat([sample(b.denoiser, b.noise, sigmas, mask, rule) for b in problem.batches(which)])


def _ab2(problem: Problem, which: str, sigmas: Sequence[float]) -> torch.Tensor:
    return torch.cat([adams_bashforth2(lambda x, s, d=b.denoiser: d.compute(x, s)[0], b.noise, sigmas)
                      for b in problem.batches(which)])


def _teacache(problem: Problem, which: str, rescale, thresholds: Sequence[float], rule: str):
    """(final latents, NFE) of every sample of a set, one threshold per sample."""
    out, start = [], 0
    for b in problem.batches(which):
        n = b.noise.shape[0]
        out.append(teacache.sample(b.denoiser, problem.signal, b.noise, problem.sigmas, rescale,
                                   thresholds[start:start + n], rule))
        start += n
    return torch.cat([x for x, _ in out]), torch.cat([nfe for _, nfe in out])


def _magcache_ratios(problem: Problem) -> list[float]:
    """Cached quantity of every step of one full-compute run on the calibration samples."""
    caches = [[] for _ in range(problem.steps)]
    for b in problem.batches("calib"):
        x = b.noise
        for k in range(problem.steps):
            v, cache = b.denoiser.compute(x, problem.sigmas[k])
            caches[k].append(cache)
            x = x + (problem.sigmas[k + 1] - problem.sigmas[k]) * v
    return policies.magcache_ratios([torch.cat(c) for c in caches])


def _per_sample_thresholds(problem: Problem, rescale, thresholds: Sequence[float], runs: list, budget: int,
                           rule: str, rounds: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
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
    lo = torch.stack([grid[(nfes[:, j] > budget)].max() if (nfes[:, j] > budget).any() else grid[0]
                      for j in range(n)])
    hi = torch.stack([grid[(nfes[:, j] < budget)].min() if (nfes[:, j] < budget).any() else grid[-1]
                      for j in range(n)])
    for _ in range(rounds):
        todo = nfe != budget
        if not todo.any():
            break
        mid = (lo + hi) / 2
        x_mid, nfe_mid = _teacache(problem, "eval", rescale, mid.tolist(), rule)
        better = todo & (score(nfe_mid) < score(nfe))
        x = torch.where(better.view(-1, *[1] * (x.dim() - 1)), x_mid, x)
        nfe = torch.where(better, nfe_mid, nfe)
        lo = torch.where(nfe_mid > budget, mid, lo)
        hi = torch.where(nfe_mid < budget, mid, hi)
    return x, nfe


def lpips_available() -> bool:
    """Whether the optional ``lpips`` extra is installed (it also needs its weights locally)."""
    return importlib.util.find_spec("lpips") is not None


def _scores(x: torch.Tensor, full: torch.Tensor, problem: Problem, lpips: bool) -> dict:
    """MSE on latents; PSNR / SSIM (and LPIPS) on images (demo), or PSNR on latents over the
    reference's range."""
    if problem.images is None:
        span = float(full.max() - full.min())
        return {"psnr": metrics.psnr(x.flatten(1), full.flatten(1), data_range=span), "ssim": None}
    img, ref = problem.images(x), problem.images(full)
    scores = metrics.report(img, ref)
    return {"psnr": scores["psnr"], "ssim": scores["ssim"], "lpips": metrics.lpips(img, ref) if lpips else None}


@torch.no_grad()
def compare(
    problem: Problem,
    budgets: Sequence[int],
    rules: Sequence[str] = ("repeat", "extrapolate"),
    config: SearchConfig = SearchConfig(),
    thresholds: Sequence[float] | None = None,
    progress: bool = True,
    align_epochs: int = 0,
    magcache: str = "flux",
) -> tuple[list[Row], dict[str, torch.Tensor]]:
    """Rows for every (budget, rule, policy), and outputs per ``"B=<b> <method> [rule]"`` (plus ``"full"``).

    ``align_epochs`` > 0 adds stage 2: budcache's plan with its schedule aligned, and plain B-step
    Euler with its B-step schedule aligned the same way (both on the calibration samples).
    ``magcache``: the MagCache preset whose max skip and retention are kept while its threshold
    is scanned (``policies.MAGCACHE_PRESETS``)."""
    k, sigmas = problem.steps, problem.sigmas
    thresholds = list(thresholds or torch.logspace(-3, 0.5, 40).tolist())
    full, t_full = metrics.timed(lambda: _static(problem, "eval", sigmas, [1] * k, "repeat"))
    rows: list[Row] = []
    lpips = problem.images is not None and lpips_available()
    if problem.images is not None and not lpips:
        print("LPIPS skipped: it needs the optional extra (pip install 'budcache[lpips]') and its weights")
    show = problem.images or (lambda x: x)
    images = {"full": show(full)}

    def add(budget: int, method: str, rule: str, x: torch.Tensor, nfe, seconds: float | None = None, **info) -> None:
        extra = problem.score(problem.images(x)) if problem.score else {}
        rows.append(Row(budget, method, rule, **_nfe(nfe), mse=metrics.mse(x, full), **_scores(x, full, problem, lpips),
                        speedup=None if seconds is None else t_full / seconds, accuracy=extra.get("accuracy"), **info))
        images[f"B={budget} {method}" + ("" if rule == "-" else f" [{rule}]")] = show(x)

    n_eval = full.shape[0]
    rescale = teacache.fit_rescaler([(b.denoiser, b.noise) for b in problem.batches("calib")], problem.signal, sigmas)
    ratios = _magcache_ratios(problem)
    bar = tqdm(total=len(rules) * len(budgets), desc="compare", disable=not progress)
    for rule in rules:
        evaluate = Evaluator(problem.batches("calib"), sigmas, rule=rule, rules_in_play=config.rules)
        weights = policies.lemica_edge_weights(Evaluator(problem.batches("calib"), sigmas, metric="l1", rule=rule))
        n_calib = sum(b.noise.shape[0] for b in problem.batches("calib"))
        tea_calib = [_teacache(problem, "calib", rescale, [t] * n_calib, rule) for t in thresholds]
        tea_eval = [_teacache(problem, "eval", rescale, [t] * n_eval, rule) for t in thresholds]
        for b in budgets:
            bar.set_postfix(rule=rule, B=b)
            plan, _ = search_plan(evaluate, b, reuse="residual", config=config, progress=False)
            masks = {"budcache": (plan.mask, plan.step_rules if plan.rules else rule, "")}
            mask, note = policies.fora_for_budget(k, b)
            masks["uniform / FORA"] = (mask, rule, note)
            masks["TaylorSeer"] = (policies.taylorseer_for_budget(k, b), rule, "")
            preset = policies.MAGCACHE_PRESETS[magcache]
            mask, info = policies.magcache_for_budget(ratios, k, b, max_skip=int(preset["max_skip"]),
                                                      retention=preset["retention"])
            masks["MagCache"] = (mask, rule, "" if info["exact"] else f"closest reachable NFE {sum(mask)}")
            masks["LeMiCa"] = (policies.lemica_path(weights, k, b), rule, "")
            schedules = dict.fromkeys(masks, sigmas)
            if align_epochs:
                aligned, _ = align(plan, problem.batches("calib"), config=AlignConfig(epochs=align_epochs), progress=False)
                masks["budcache + aligned sigmas"], schedules["budcache + aligned sigmas"] = masks["budcache"], aligned.sigmas
            for method, (mask, mask_rule, note) in masks.items():
                x, seconds = metrics.timed(lambda: _static(problem, "eval", schedules[method], mask, mask_rule))
                add(b, method, rule, x, [sum(mask)] * n_eval, seconds, mask="".join("#" if m else "." for m in mask),
                    note=note)
            # TeaCache P1: one global threshold, mean NFE on the calibration samples closest to B
            means = [float(nfe.float().mean()) for _, nfe in tea_calib]
            best = min(range(len(thresholds)), key=lambda i: (abs(means[i] - b), means[i]))
            x, nfe = tea_eval[best]
            add(b, "TeaCache (global threshold)", rule, x, nfe.tolist(),
                note=f"threshold {thresholds[best]:.3g}, calibration mean NFE {means[best]:.2f}")
            # TeaCache P2: per-sample threshold hitting B (else the closest NFE <= B)
            x, nfe = _per_sample_thresholds(problem, rescale, thresholds, tea_eval, b, rule)
            add(b, "TeaCache (per-sample threshold)", rule, x, nfe.tolist(),
                note=f"{int((nfe == b).sum())}/{n_eval} samples exactly at B")
            bar.update()
    bar.close()
    for b in budgets:
        fewer = problem.fewer_sigmas(b)
        x, seconds = metrics.timed(lambda: _static(problem, "eval", fewer, [1] * b, "repeat"))
        add(b, f"plain {b}-step Euler", "-", x, [b] * n_eval, seconds)
        x, seconds = metrics.timed(lambda: _ab2(problem, "eval", fewer))
        add(b, f"plain {b}-step AB2", "-", x, [b] * n_eval, seconds)
        if align_epochs:
            euler = CachePlan(num_steps=b, budget=b, mask=[1] * b, sigmas=fewer)
            aligned, _ = align(euler, problem.batches("calib"), config=AlignConfig(epochs=align_epochs),
                               teacher_sigmas=sigmas, progress=False)
            x, seconds = metrics.timed(lambda: _static(problem, "eval", aligned.sigmas, [1] * b, "repeat"))
            add(b, f"plain {b}-step Euler, aligned sigmas", "-", x, [b] * n_eval, seconds)
    return rows, images


def demo_problem(calibration: int = 16, held_out: int = 100, seed: int = 0, steps: int = 28):
    """The comparison problem on the embedded demo model (residual reuse); a context manager."""
    from contextlib import ExitStack, contextmanager

    from .demo.data import accuracy, digit_classifier
    from .demo.model import load_demo_model, unpack
    from .demo.problem import demo_denoisers, demo_inputs

    @contextmanager
    def build():
        model = load_demo_model()
        sets = {"calib": demo_inputs(calibration, seed), "eval": demo_inputs(held_out, seed + HELD_OUT_SEED_OFFSET)}
        classifier = digit_classifier()
        with ExitStack() as stack:
            make = stack.enter_context(demo_denoisers(model, "residual"))
            signal = stack.enter_context(teacache.indicator(model.transformer))
            yield Problem(
                steps=steps, sigmas=linear_sigmas(steps),
                batches=lambda which: [Batch(make(sets[which][1]), sets[which][0])],
                fewer_sigmas=linear_sigmas, signal=signal, images=unpack,
                score=lambda img: {"accuracy": accuracy(classifier, img, sets["eval"][1])},
            )

    return build()


def pipeline_problem(calib, held_out):
    """The comparison problem on calibrated pipeline captures (``budcache.calibrate``): one batch
    per prompt, scored on latents (PSNR over the reference's range); a context manager."""
    from contextlib import ExitStack, contextmanager

    from .replay import denoisers

    if held_out.sigmas != calib.sigmas:
        raise ValueError("held-out captures use another sigma schedule than the calibration ones")

    @contextmanager
    def build():
        with ExitStack() as stack:
            make = stack.enter_context(denoisers(calib, "residual"))
            signal = stack.enter_context(teacache.indicator(calib.pipe.transformer))
            sets = {"calib": calib.captures, "eval": held_out.captures}
            yield Problem(
                steps=calib.num_steps, sigmas=calib.sigmas,
                batches=lambda which: [Batch(make(c), c.latents.float()) for c in sets[which]],
                fewer_sigmas=calib.default_sigmas, signal=signal,
            )

    return build()


def table(rows: Sequence[Row]) -> str:
    """One block per budget, best PSNR first."""
    head = (f"{'B':>3} {'method':<34} {'rule':<12} {'NFE mean±sd [min,max]':<24} {'speedup':>8} {'MSE':>10} "
            f"{'PSNR':>7} {'SSIM':>7} {'acc':>6}  note")
    lines = []
    for b in sorted({r.budget for r in rows}):
        lines += [head, "-" * len(head)]
        for r in sorted((r for r in rows if r.budget == b), key=lambda r: -r.psnr):
            nfe = f"{r.nfe_mean:.2f}±{r.nfe_sd:.2f} [{r.nfe_min},{r.nfe_max}]"
            speed = f"{r.speedup:7.2f}x" if r.speedup is not None else f"{'':>8}"
            acc = f"{r.accuracy:6.3f}" if r.accuracy is not None else f"{'':>6}"
            ssim = f"{r.ssim:7.4f}" if r.ssim is not None else f"{'':>7}"
            lines.append(f"{b:>3} {r.method:<34} {r.rule:<12} {nfe:<24} {speed} {r.mse:10.3e} {r.psnr:7.2f} "
                         f"{ssim} {acc}  {r.note}")
        lines.append("")
    return "\n".join(lines)


def write(rows: Sequence[Row], images: dict[str, torch.Tensor], out: Path, samples: int = 8) -> None:
    """``table.txt``, ``results.csv``, ``results.json``, ``quality_vs_nfe.png`` and ``samples_B<b>.png``."""
    out.mkdir(parents=True, exist_ok=True)
    text = table(rows)
    (out / "table.txt").write_text(text + "\n")
    records = [asdict(r) for r in rows]
    (out / "results.json").write_text(json.dumps(records, indent=1))
    with (out / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[k for k in records[0] if k != "extra"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)
    plots.plot_quality_vs_nfe(rows, out / "quality_vs_nfe.png")
    for b in sorted({r.budget for r in rows}) if images["full"].dim() == 4 and images["full"].shape[1] in (1, 3) else ():
        grid = [("full", images["full"][:samples])]
        grid += [(name.removeprefix(f"B={b} "), img[:samples]) for name, img in images.items()
                 if name.startswith(f"B={b} ")]
        plots.image_grid(grid, out / f"samples_B{b}.png")
    print(text)
