"""Nothing is lost: Ctrl-C and SIGTERM save the best plan and exit 130 / 143, a plan that cannot be
written where asked is written beside the checkpoint, and files follow the umask."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from budcache.cli import main
from budcache.plan import CachePlan
from budcache.sampling import OutputDenoiser, linear_sigmas
from budcache.search import Batch, Evaluator, SearchConfig, search_plan

ROOT = Path(__file__).resolve().parents[1]
LONG = [
    "search",
    "--steps",
    "16",
    "--budget",
    "5",
    "--calib",
    "4",
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


def test_ctrl_c_and_sigterm_save_the_best_plan_and_exit_130_and_143(tmp_path):
    runs = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        out = tmp_path / f"{sig.name}.json"
        runs[sig] = (
            out,
            subprocess.Popen(
                [sys.executable, "-m", "budcache", "--threads", "1", *LONG, "--out", str(out)],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
        )
    deadline = time.time() + 120
    for sig, (out, proc) in runs.items():
        ckpt = out.with_suffix(".checkpoint.json")
        while not (ckpt.exists() and len(json.loads(ckpt.read_text() or "{}").get("memo", {})) >= 10):
            assert proc.poll() is None and time.time() < deadline, "search ended before it could be stopped"
            time.sleep(0.02)
        proc.send_signal(sig)
    for sig, (out, proc) in runs.items():
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 128 + sig, err
        assert err.strip().splitlines()[-1] == (
            f"interrupted: saved the best plan found so far to {out} (evaluations in "
            f"{out.with_suffix('.checkpoint.json')}); continue with the same command and --resume"
        )
        record = CachePlan.load(out).record
        assert record.interrupted and record.uniform_objective is None  # written at once, no references


def test_a_plan_that_cannot_be_written_at_the_end_is_written_beside_the_checkpoint(tmp_path, monkeypatch, capsys):
    from budcache.cli import commands

    out, ckpt = tmp_path / "gone" / "plan.json", tmp_path / "ck" / "search.json"
    search = commands.search_source

    def search_then_lose_the_folder(*args, **kwargs):
        result = search(*args, **kwargs)
        shutil.rmtree(out.parent)
        out.parent.write_text("now a file")
        return result

    monkeypatch.setattr(commands, "search_source", search_then_lose_the_folder)
    with pytest.raises(SystemExit) as exit:
        main(
            [
                "search",
                "--steps",
                "6",
                "--budget",
                "2",
                "--calib",
                "2",
                "--iterations",
                "4",
                "--starts",
                "1",
                "--kicks",
                "0",
                "--no-hill-climb",
                "--no-progress",
                "--out",
                str(out),
                "--checkpoint",
                str(ckpt),
            ]
        )
    rescued = ckpt.with_suffix(".plan.json")
    assert exit.value.code == 1
    assert capsys.readouterr().err.strip().endswith(f"the plan was saved to {rescued} instead")
    assert sum(CachePlan.load(rescued).mask) == 2


def test_plans_and_checkpoints_follow_the_umask(gmm, tmp_path):
    previous = os.umask(0o027)
    try:
        evaluate = Evaluator([Batch(OutputDenoiser(gmm), gmm.noise(4, seed=0))], linear_sigmas(8))
        plan, _ = search_plan(
            evaluate,
            3,
            reuse="output",
            config=SearchConfig(strategy="classic", iterations=5, starts=1, kicks=0),
            progress=False,
            checkpoint=tmp_path / "c.json",
        )
        plan.save(tmp_path / "p.json")
    finally:
        os.umask(previous)
    assert {(tmp_path / n).stat().st_mode & 0o777 for n in ("p.json", "c.json")} == {0o640}


def test_search_plan_refuses_a_checkpoint_another_search_holds(gmm, tmp_path):
    import fcntl

    from budcache.errors import CheckpointError
    from budcache.search.checkpoint import lock_path

    ckpt = tmp_path / "c.json"
    evaluate = Evaluator([Batch(OutputDenoiser(gmm), gmm.noise(4, seed=0))], linear_sigmas(8))
    with open(lock_path(ckpt), "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(CheckpointError, match="in use by another search"):
            search_plan(
                evaluate,
                3,
                reuse="output",
                config=SearchConfig(strategy="classic", iterations=5, starts=1, kicks=0),
                progress=False,
                checkpoint=ckpt,
            )
    assert not ckpt.exists()


def test_search_plan_refuses_an_unwritable_checkpoint_before_searching(gmm, tmp_path):
    from budcache.errors import CheckpointError

    evaluate = Evaluator([Batch(OutputDenoiser(gmm), gmm.noise(4, seed=0))], linear_sigmas(8))
    (tmp_path / "file").write_text("x")
    for where, message in ((tmp_path, "is a folder"), (tmp_path / "file" / "c.json", "cannot write beside")):
        with pytest.raises(CheckpointError, match=message):
            search_plan(
                evaluate,
                3,
                reuse="output",
                config=SearchConfig(strategy="classic", iterations=5, starts=1, kicks=0),
                progress=False,
                checkpoint=where,
            )
    assert evaluate.evaluations == 0


def test_the_frontier_stops_at_an_interrupted_search(monkeypatch):
    """Ctrl-C in one budget's search ends the frontier with the plans so far (not only that search)."""
    from types import SimpleNamespace

    from budcache.plan import SearchRecord, uniform_mask
    from budcache.search import frontier

    def search(source, b, **kwargs):
        record = SearchRecord(objective=1.0, interrupted=b == 3)
        return CachePlan(num_steps=8, budget=b, mask=uniform_mask(8, b), record=record), None

    monkeypatch.setattr(frontier, "source_evaluator", lambda *a, **k: SimpleNamespace(evaluations=0, forwards=0))
    monkeypatch.setattr(frontier, "search_source", search)
    plans, _ = frontier.search_frontier(None, [2, 3, 4, 5], progress=False)
    assert list(plans) == [2, 3]


def test_an_interrupted_alignment_keeps_its_best_schedule(gmm, monkeypatch):
    import budcache.align.fit as stage2

    plan = CachePlan(num_steps=8, budget=3, mask=[1, 0, 0, 1, 0, 0, 1, 0], reuse="output", sigmas=linear_sigmas(8))
    batches = [Batch(OutputDenoiser(gmm), gmm.noise(8, seed=0))]
    loss, calls = stage2._loss, []

    def interrupted_in_epoch_4(*args):
        calls.append(args[5])  # backward: a training pass
        if sum(calls) == 4:
            raise KeyboardInterrupt
        return loss(*args)

    monkeypatch.setattr(stage2, "_loss", interrupted_in_epoch_4)
    aligned, result = stage2.align(plan, batches, config=stage2.AlignConfig(epochs=20, lr=0.2), progress=False)
    assert result.interrupted and len(result.train_loss) == 3 and len(result.validation_loss) == 4
    assert aligned.sigmas == result.sigmas and aligned.sigmas[0] == 1.0 and aligned.sigmas[-1] == 0.0
