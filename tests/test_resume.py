"""Resumable searches: a killed run resumes to the plan an uninterrupted run finds."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from budcache.cli import main
from budcache.errors import CheckpointError
from budcache.plan import CachePlan
from budcache.sampling import OutputDenoiser, linear_sigmas
from budcache.search import Batch, Evaluator, SearchConfig, run_search, search_plan
from tests.fixtures.interrupt import interrupted_after

K, B = 12, 4
CONFIG = SearchConfig(strategy="classic", iterations=80, seed=3, kicks=2, checkpoint_every=5)


def evaluator(gmm):
    return Evaluator([Batch(OutputDenoiser(gmm), gmm.noise(16, seed=0))], linear_sigmas(K))


def test_interrupted_search_resumes_to_the_same_plan(gmm, tmp_path):
    reference, _ = search_plan(evaluator(gmm), B, reuse="output", config=CONFIG, progress=False)
    ev = interrupted_after(evaluator(gmm), 40)
    ckpt = tmp_path / "search.json"
    partial, _ = search_plan(ev, B, reuse="output", config=CONFIG, progress=False, checkpoint=ckpt)
    assert partial.record.interrupted and ckpt.exists()
    saved = len(json.loads(ckpt.read_text())["memo"])
    fresh = evaluator(gmm)
    resumed, _ = search_plan(fresh, B, reuse="output", config=CONFIG, progress=False, checkpoint=ckpt, resume=True)
    assert 0 < saved < fresh.evaluations
    assert resumed.mask == reference.mask and resumed.record.objective == reference.record.objective
    assert resumed.record.evaluations == reference.record.evaluations


def test_bad_checkpoints_are_refused(gmm, tmp_path):
    ckpt = tmp_path / "search.json"
    search_plan(evaluator(gmm), B, reuse="output", config=CONFIG, progress=False, checkpoint=ckpt)
    with pytest.raises(CheckpointError, match="budget differs"):
        search_plan(evaluator(gmm), B + 1, reuse="output", config=CONFIG, progress=False, checkpoint=ckpt, resume=True)
    ckpt.write_text(ckpt.read_text()[:100])
    with pytest.raises(CheckpointError, match="not a readable search checkpoint"):
        search_plan(evaluator(gmm), B, reuse="output", config=CONFIG, progress=False, checkpoint=ckpt, resume=True)


def test_search_killed_with_sigkill_resumes_from_the_command_line(tmp_path):
    args = [
        "search",
        "--model",
        "demo",
        "--steps",
        "16",
        "--budget",
        "5",
        "--calib",
        "4",
        "--rule",
        "repeat",
        "--iterations",
        "400",
        "--starts",
        "2",
        "--kicks",
        "4",
        "--checkpoint-every",
        "5",
        "--no-progress",
    ]
    out, ckpt = tmp_path / "killed.json", tmp_path / "killed.checkpoint.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "budcache.cli", "--threads", "1", *args, "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while not (ckpt.exists() and len(json.loads(ckpt.read_text() or "{}").get("memo", {})) >= 30):
        assert proc.poll() is None and time.time() < deadline, "search ended before it could be killed"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    torch.set_num_threads(1)
    main([*args, "--out", str(out), "--resume"])
    main([*args, "--out", str(tmp_path / "whole.json"), "--checkpoint", str(tmp_path / "whole.ckpt.json")])
    resumed, whole = CachePlan.load(out), CachePlan.load(tmp_path / "whole.json")
    assert resumed.mask == whole.mask and resumed.record.objective == whole.record.objective


def test_batched_candidates_score_what_one_at_a_time_scores(demo_model):
    """Hill-climbing neighbours advanced together in one batched forward, each from its own stored
    prefix, get the losses the one-at-a-time evaluator gives; the search takes the same path."""
    from budcache.demo.problem import demo_batches, demo_denoisers, demo_inputs
    from budcache.plan import uniform_mask
    from budcache.search import neighbours

    with demo_denoisers(demo_model, "residual") as make:

        def fresh():
            return Evaluator(demo_batches(make, *demo_inputs(4, 0)), linear_sigmas(K), rule="extrapolate")

        batched, single = fresh(), fresh()
        candidates = neighbours(tuple(uniform_mask(K, B)), tuple(range(1, K)))
        assert batched.many(candidates, group=6) == pytest.approx([single(c) for c in candidates], rel=1e-6)
        runs = [
            run_search(
                fresh(), B, SearchConfig(strategy="classic", iterations=20, kicks=1, batch_candidates=g), progress=False
            )
            for g in (1, 8)
        ]
        assert runs[0].mask == runs[1].mask and [h[0] for h in runs[0].history] == [h[0] for h in runs[1].history]


def test_resume_under_unipc_replays_and_a_euler_checkpoint_is_refused(tmp_path, capsys):
    """A finished UniPC search resumed from its checkpoint replays to the same plan without search
    forwards (only the resumed run's teacher, K per sample, is added); the checkpoint of the same search under
    Euler is refused (its schedule and solver differ)."""
    args = [
        "search",
        "--steps",
        "8",
        "--budget",
        "3",
        "--calib",
        "3",
        "--iterations",
        "12",
        "--starts",
        "1",
        "--kicks",
        "0",
        "--no-progress",
    ]
    out = tmp_path / "u.json"
    main([*args, "--scheduler", "unipc", "--out", str(out)])
    first = CachePlan.load(out)
    main([*args, "--scheduler", "unipc", "--out", str(out), "--resume"])
    again = CachePlan.load(out)
    assert again.mask == first.mask and again.record.forwards == first.record.forwards + 8 * 3
    assert again.record.solver == "UniPCMultistep"
    main([*args, "--out", str(tmp_path / "e.json")])
    with pytest.raises(SystemExit, match=r"another search \((sigmas|solver) differs\)"):
        main([*args, "--scheduler", "unipc", "--out", str(tmp_path / "e.json"), "--resume"])
