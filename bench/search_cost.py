"""Search cost against plan quality: every named effort on the demo model (K=28, B in {6, 8, 10},
repeat and extrapolate, 32 calibration samples) and on the Gaussian-mixture flow (K=20, exhaustive
optimum known). Prints JSON and writes ``bench-out/search_cost.json``.

Forwards per sample count block-stack executions for one calibration sample, the teacher's
included (a batched forward over n samples counts n). The reference objective is the best any
effort found for that setting (``thorough`` with ``--thorough``), or the exhaustive optimum.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import _root  # noqa: F401  (tests.fixtures)
import torch

from budcache.demo.problem import demo_source
from budcache.search import EFFORTS, Batch, Evaluator, anneal, exhaustive
from budcache.sampling import OutputDenoiser, linear_sigmas
from tests.fixtures.gmm import GaussianMixtureFlow


def run(make_evaluator, budget: int, rule: str, efforts: list[str]) -> dict:
    out = {}
    for name in efforts:
        evaluate = make_evaluator(rule)
        start = time.perf_counter()
        result = anneal(evaluate, budget, EFFORTS[name], progress=False)
        out[name] = {"loss": result.loss, "mask": "".join("#" if m else "." for m in result.mask),
                     "forwards_per_sample": evaluate.forwards / evaluate.samples, "masks": evaluate.evaluations,
                     "seconds": round(time.perf_counter() - start, 1)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--budgets", type=int, nargs="+", default=[6, 8, 10])
    p.add_argument("--calib", type=int, default=32)
    p.add_argument("--thorough", action="store_true", help="also run the thorough effort (slow)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("bench-out/search_cost.json"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    efforts = ["fast", "default"] + (["thorough"] if a.thorough else [])
    rows = []
    with demo_source(28, a.calib, validation=0, held_out=0) as source:
        for rule in ("repeat", "extrapolate"):
            for b in a.budgets:
                found = run(lambda r: Evaluator(source.batches("calib"), source.solver, rule=r), b, rule, efforts)
                best = min(v["loss"] for v in found.values())
                rows.append({"model": "demo", "K": 28, "B": b, "rule": rule, "best_known": best,
                             **{n: {**v, "ratio": v["loss"] / best} for n, v in found.items()}})
                print(json.dumps(rows[-1]), flush=True)
    gmm = GaussianMixtureFlow()
    for b in a.budgets:
        def make(rule, noise=gmm.noise(64, 0)):
            return Evaluator([Batch(OutputDenoiser(gmm), noise)], linear_sigmas(20), rule=rule)
        optimum = exhaustive(make("repeat"), b, progress=False).loss
        found = run(make, b, "repeat", efforts)
        rows.append({"model": "gmm", "K": 20, "B": b, "rule": "repeat", "best_known": optimum,
                     **{n: {**v, "ratio": v["loss"] / optimum} for n, v in found.items()}})
        print(json.dumps(rows[-1]), flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"rows": rows}, indent=1))


if __name__ == "__main__":
    main()
