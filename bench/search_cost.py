"""Search cost against plan quality: the named efforts on the demo model (K=28, B in {6, 8, 10}, and
with ``--k50`` K=50, B in {14, 20}; repeat and extrapolate; 32 calibration samples in batches of 8)
and on the Gaussian-mixture flow (K=20, B in {6, 8, 10}, exhaustive optimum known, 10 noise seeds).
Prints one JSON line per setting, writes ``bench-out/search_cost.json`` and the anytime plot
``bench-out/search_cost.png`` (best objective against forwards per sample, per effort, B and rule).

Forwards per sample count block-stack executions for one calibration sample, the teacher's and the
screening subsets' included (a batched forward over n samples counts n). The best-known objective
is the lowest any effort run found for that setting (``--efforts ... long`` adds the long search,
4 x 1000 proposals + 8 kicks) or the exhaustive optimum. With ``--held-out`` the default's and the best plan's PSNR
against full compute on 100 held-out demo samples are compared.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import _root  # noqa: F401  (tests.fixtures)
import torch
import budcache
from matplotlib.figure import Figure

from budcache.demo.problem import demo_source
from budcache.evaluation.compare import static_outputs
from budcache.evaluation.metrics import psnr
from budcache.search import EFFORTS, Batch, Evaluator, exhaustive, run_search
from budcache.sampling import OutputDenoiser, linear_sigmas
from tests.fixtures.gmm import GaussianMixtureFlow
from tests.fixtures.tiny import tiny_flux_pipeline


def run(make, budget: int, efforts: list[str]) -> dict:
    out = {}
    for name in efforts:
        evaluate = make()
        start = time.perf_counter()
        result = run_search(evaluate, budget, EFFORTS[name], progress=False)
        out[name] = {"loss": result.loss, "mask": "".join("#" if m else "." for m in result.mask),
                     "forwards_per_sample": round(evaluate.forwards / evaluate.samples, 1),
                     "masks": evaluate.evaluations, "seconds": round(time.perf_counter() - start, 1),
                     "curve": result.curve[:: max(1, len(result.curve) // 200)] + result.curve[-1:]}
    return out


def held_out_psnr(source, full: torch.Tensor, rule: str, masks: dict[str, str]) -> dict[str, float]:
    """PSNR of each mask's held-out outputs against full compute (``full``, computed once per source)."""
    return {name: round(psnr(static_outputs(source, "eval", source.solver, [int(c == "#") for c in m], rule), full), 3)
            for name, m in masks.items()}


def pipeline_rows(prompts: int, efforts: list[str], known: dict[tuple, float]) -> list[dict]:
    """Forwards per prompt of each effort on the tiny FLUX pipeline (K=28, B=10, guidance-distilled, one call per
    step): what a search costs on a real pipeline, whose block-stack forward is the unit of GPU time."""
    torch.manual_seed(0)
    pipe = tiny_flux_pipeline()
    inputs = [dict(prompt_embeds=torch.randn(1, 8, 32), pooled_prompt_embeds=torch.randn(1, 32)) for _ in range(prompts)]
    calib = budcache.calibrate(pipe, inputs, 28, progress=False, height=16, width=16)
    rows = []
    for rule in ("repeat", "extrapolate"):
        found = {}
        for name in efforts:
            start = time.perf_counter()
            plan = budcache.search(calib, 10, rule=rule, config=EFFORTS[name], progress=False)
            found[name] = {"loss": plan.record.objective, "forwards_per_prompt": plan.record.forwards / prompts,
                           "masks": plan.record.evaluations, "seconds": round(time.perf_counter() - start, 1)}
        best = min([v["loss"] for v in found.values()] + [known.get(("tiny FLUX pipeline", 28, 10, rule, None), math.inf)])
        rows.append({"model": "tiny FLUX pipeline", "K": 28, "B": 10, "rule": rule, "prompts": prompts,
                     **{n: {**v, "ratio": round(v["loss"] / best, 4)} for n, v in found.items()}})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def plot(rows: list[dict], path: Path) -> None:
    fig = Figure(figsize=(4 * 3, 3.2 * 3))
    demo = [r for r in rows if r["model"] == "demo"]
    gmm = [r for r in rows if r["model"] == "gmm" and r["seed"] == 0]
    panels = demo + gmm
    cols = 3
    axes = fig.subplots((len(panels) + cols - 1) // cols, cols, squeeze=False).ravel()
    for ax, row in zip(axes, panels):
        for name in EFFORTS:
            if name in row:
                xs, ys = zip(*row[name]["curve"])
                ax.step(xs, [y / row["best_known"] for y in ys], where="post", label=name)
        ax.axhline(1.02, color="grey", lw=0.6, ls="--")
        ax.set_xscale("log")
        ax.set_ylim(0.99, 2.0)
        ax.set_title(f"{row['model']} K={row['K']} B={row['B']} {row['rule']}", fontsize=9)
        ax.set_xlabel("forwards per sample")
        ax.set_ylabel("best / best known")
    for ax in axes[len(panels):]:
        ax.axis("off")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def gpu_rows(a: argparse.Namespace) -> list[dict]:
    """Calibration + search at real scale (``--gpu``): FLUX.1-dev at 1024x1024 (K=28, B=10) and Wan2.1-1.3B at
    480x832 (K=50, B=20; ``--wan-frames``), random bf16 weights built from the published configs
    (``bench/real_scale.py``), ``--gpu-prompts`` prompts, the ``--efforts`` through ``budcache.calibrate`` +
    ``budcache.search``. The time outside transformer forwards is the search's wall time minus its forwards times
    the time of one full-compute step (a full generation / K, measured first)."""
    import real_scale

    device = torch.device("cpu" if a.tiny else "cuda")
    dtype = torch.float32 if a.tiny else torch.bfloat16
    rows = []
    for build in (real_scale.flux, lambda *args: real_scale.wan(*args, frames=a.wan_frames)):
        case = build(device, dtype, a.tiny)
        with torch.no_grad():
            case.run()  # warm-up
            real_scale.sync()
            start = time.perf_counter()
            case.run()
            real_scale.sync()
            step_s = (time.perf_counter() - start) / case.steps
            prompts = [case.prompt(i) for i in range(a.gpu_prompts)]
            start = time.perf_counter()
            calib = budcache.calibrate(case.pipe, prompts, case.steps, progress=False, **case.call)
            real_scale.sync()
            calibrate_s = time.perf_counter() - start
        for name in a.efforts:
            start = time.perf_counter()
            plan = budcache.search(calib, case.budget, config=EFFORTS[name], progress=False)
            real_scale.sync()
            search_s = time.perf_counter() - start
            forwards = plan.record.forwards  # summed over the prompts
            row = {"model": case.name, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                   "K": case.steps, "B": case.budget, "prompts": a.gpu_prompts, "effort": name,
                   "step_s": round(step_s, 4), "calibrate_s": round(calibrate_s, 1), "search_s": round(search_s, 1),
                   "total_min": round((calibrate_s + search_s) / 60, 2),
                   "forwards_per_prompt": round(forwards / a.gpu_prompts, 1),
                   "outside_forwards_share": round(1 - forwards * step_s / search_s, 4), "mask": "".join("#" if m else "." for m in plan.mask)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budgets", type=int, nargs="+", default=[6, 8, 10])
    p.add_argument("--calib", type=int, default=32)
    p.add_argument("--efforts", nargs="+", choices=list(EFFORTS), default=["fast", "default", "thorough"],
                   help="the efforts to run (long: the reference search, about an hour here)")
    p.add_argument("--k50", action="store_true", help="also K=50, B in {14, 20}")
    p.add_argument("--skip-k28", action="store_true")
    p.add_argument("--held-out", action="store_true", help="held-out PSNR of the default's and the best plans")
    p.add_argument("--skip-demo", action="store_true")
    p.add_argument("--pipeline-prompts", type=int, default=0,
                   help="also the tiny FLUX pipeline with this many prompts (forwards per prompt)")
    p.add_argument("--gmm-seeds", type=int, default=10)
    p.add_argument("--reference", type=Path, nargs="*", default=[],
                   help="earlier outputs of this benchmark whose best-known objectives count too (a long search run "
                        "once, then the quick efforts again)")
    p.add_argument("--gpu", action="store_true",
                   help="only the real-scale timing on a CUDA GPU (FLUX.1-dev, Wan2.1-1.3B; random bf16 weights)")
    p.add_argument("--tiny", action="store_true", help="with --gpu: a CPU smoke run on tiny configs (no figure of value)")
    p.add_argument("--gpu-prompts", type=int, default=16)
    p.add_argument("--wan-frames", type=int, default=33, help="with --gpu: Wan2.1 frames (4n+1)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("bench-out/search_cost.json"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.gpu:
        if not a.tiny and not torch.cuda.is_available():
            sys.exit("--gpu needs a CUDA GPU (none found); add --tiny for a CPU smoke run of the harness")
        rows = gpu_rows(a)
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.with_name(a.out.stem + "_gpu.json").write_text(json.dumps({"rows": rows}, indent=1))
        return
    efforts = a.efforts
    known: dict[tuple, float] = {}
    known_masks: dict[tuple, str] = {}  # the best plan's mask of a reference row
    for path in a.reference:
        for r in json.loads(path.read_text())["rows"]:
            key = (r["model"], r["K"], r["B"], r["rule"], r.get("seed"))
            known[key] = min(known.get(key, math.inf), r["best_known"])
            runs = [v for v in r.values() if isinstance(v, dict) and "mask" in v]
            if runs and min(v["loss"] for v in runs) <= known[key]:
                known_masks[key] = min(runs, key=lambda v: v["loss"])["mask"]
    settings = [] if a.skip_demo else ([] if a.skip_k28 else [(28, b) for b in a.budgets]) + (
        [(50, 14), (50, 20)] if a.k50 else [])
    rows = []

    def emit(row: dict) -> None:
        rows.append(row)
        print(json.dumps({k: {f: x for f, x in v.items() if f != "curve"} if isinstance(v, dict) and "curve" in v
                          else v for k, v in row.items()}), flush=True)

    for k, b in settings:
        with demo_source(k, a.calib, validation=0, held_out=100 if a.held_out else 0) as source:
            full = static_outputs(source, "eval", source.solver, [1] * k, "repeat") if a.held_out else None
            for rule in ("repeat", "extrapolate"):
                found = run(lambda: Evaluator(source.batches("calib"), source.solver, rule=rule), b, efforts)
                best = min([v["loss"] for v in found.values()] + [known.get(("demo", k, b, rule, None), math.inf)])
                row = {"model": "demo", "K": k, "B": b, "rule": rule, "best_known": best,
                       **{n: {**v, "ratio": round(v["loss"] / best, 4)} for n, v in found.items()}}
                if a.held_out:
                    masks = {n: v["mask"] for n, v in found.items()}
                    if ("demo", k, b, rule, None) in known_masks:
                        masks["best known"] = known_masks["demo", k, b, rule, None]
                    row["held_out_psnr"] = held_out_psnr(source, full, rule, masks)
                emit(row)
    gmm = GaussianMixtureFlow()
    for b in a.budgets if a.gmm_seeds else []:
        for seed in range(a.gmm_seeds):
            def make(noise=gmm.noise(64, seed)):
                return Evaluator([Batch(OutputDenoiser(gmm), part) for part in noise.split(8)], linear_sigmas(20))
            optimum = exhaustive(make(), b, progress=False).loss
            found = run(make, b, [e for e in efforts if e != "long"])
            emit({"model": "gmm", "K": 20, "B": b, "rule": "repeat", "seed": seed, "best_known": optimum,
                  **{n: {**v, "ratio": round(v["loss"] / optimum, 4)} for n, v in found.items()}})
    if a.pipeline_prompts:
        rows += pipeline_rows(a.pipeline_prompts, [e for e in efforts if e != "long"], known)
    summary = {}
    for r in rows:
        key = f"{r['model']} K={r['K']} B={r['B']} {r['rule']}"
        for n in efforts:
            if n in r:
                s = summary.setdefault(key, {}).setdefault(n, {"worst_ratio": 0.0, "max_forwards": 0.0})
                s["worst_ratio"] = max(s["worst_ratio"], r[n]["ratio"])
                s["max_forwards"] = max(s["max_forwards"], r[n].get("forwards_per_sample", r[n].get("forwards_per_prompt")))
    print(json.dumps({"summary": summary}, indent=1))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"rows": rows, "summary": summary}, indent=1))
    plot(rows, a.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
