"""Distributed search (torch.distributed, gloo on CPU): calibration samples sharded over 2
processes, losses all-reduced, every rank deciding the same; equal to the single-process search."""

import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from budcache.sampling import OutputDenoiser, linear_sigmas
from budcache.search import Batch, Evaluator, SearchConfig, search_plan
from tests.fixtures.gmm import GaussianMixtureFlow

K, B, N = 14, 5, 24
CONFIG = SearchConfig(strategy="classic", iterations=60, seed=5, kicks=2)


def _search(noise: torch.Tensor) -> dict:
    gmm = GaussianMixtureFlow(dim=8, components=4, seed=3)
    evaluate = Evaluator([Batch(OutputDenoiser(gmm), noise)], linear_sigmas(K))
    plan, result = search_plan(evaluate, B, reuse="output", config=CONFIG, progress=False)
    return {
        "mask": plan.mask,
        "objective": plan.record.objective,
        "history": result.history,
        "calibration_size": plan.record.calibration_size,
        "forwards": plan.record.forwards,
    }


def _noise() -> torch.Tensor:
    return GaussianMixtureFlow(dim=8, components=4, seed=3).noise(N, 1)


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        result = _search(_noise()[rank::world])
    finally:
        dist.destroy_process_group()
    with open(os.path.join(out, f"{rank}.json"), "w") as f:
        json.dump(result, f)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_processes_find_the_single_process_plan(tmp_path):
    single = _search(_noise())
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(2)]
    for r in ranks:
        assert r["mask"] == single["mask"]
        assert r["objective"] == pytest.approx(single["objective"], rel=1e-12)
        assert [h[0] for h in r["history"]] == [h[0] for h in single["history"]]
        assert r["calibration_size"] == N and r["forwards"] == single["forwards"]


@pytest.mark.parametrize("scheduler", ["euler", "unipc"])
def test_torchrun_command_line_equals_one_process(tmp_path, scheduler):
    import subprocess
    import sys

    from budcache.plan import CachePlan

    args = [
        "search",
        "--model",
        "demo",
        "--steps",
        "10",
        "--budget",
        "4",
        "--calib",
        "6",
        "--iterations",
        "30",
        "--starts",
        "1",
        "--kicks",
        "1",
        "--no-progress",
        "--scheduler",
        scheduler,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for command in (
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_port",
            str(_free_port()),
            "-m",
            "budcache.cli",
            "--threads",
            "1",
            *args,
            "--out",
            str(tmp_path / "two.json"),
        ],
        [sys.executable, "-m", "budcache.cli", "--threads", "1", *args, "--out", str(tmp_path / "one.json")],
    ):
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
    two, one = CachePlan.load(tmp_path / "two.json"), CachePlan.load(tmp_path / "one.json")
    # same plan; the loss agrees to float32 batch-size effects (each rank runs batches of 3, not 6)
    assert two.mask == one.mask and two.record.objective == pytest.approx(one.record.objective, rel=1e-5)
    assert two.record.calibration_size == one.record.calibration_size == 6
    assert two.record.solver == one.record.solver == ("Euler" if scheduler == "euler" else "UniPCMultistep")


def _shifted_worker(rank: int, world: int, port: int, out: str, same_reference: bool) -> None:
    """Rank r holds a batch at the reference schedule and one shifted x(2 + r); with ``same_reference`` False the
    ranks' references differ (rank 1's is shifted x1.5)."""
    from budcache.errors import SearchError
    from budcache.sampling.shift import shift_sigmas

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    gmm = GaussianMixtureFlow(dim=8, components=4, seed=3)
    noise = _noise()[rank::world]
    reference = shift_sigmas(linear_sigmas(K), 1.5 if rank and not same_reference else 1.0)
    batches = [Batch(OutputDenoiser(gmm), noise[:6]), Batch(OutputDenoiser(gmm), noise[6:], shift=2.0 + rank)]
    try:
        plan, _ = search_plan(Evaluator(batches, reference), B, reuse="output", config=CONFIG, progress=False)
        result = {"shifts": plan.shifts}
    except SearchError as e:
        result = {"error": str(e)}
    finally:
        dist.destroy_process_group()
    with open(os.path.join(out, f"{rank}.json"), "w") as f:
        json.dump(result, f)


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
@pytest.mark.parametrize("same_reference", [True, False])
def test_shift_ranges_are_gathered_over_the_ranks(tmp_path, same_reference):
    """A search over several sizes records the shift range of every rank's batches; ranks whose schedules (their
    first samples' sizes) differ are refused before the search."""
    mp.spawn(_shifted_worker, args=(2, _free_port(), str(tmp_path), same_reference), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(2)]
    if same_reference:
        assert ranks == [{"shifts": [1.0, 3.0]}] * 2
    else:
        assert all("start at different sizes" in r["error"] for r in ranks)
