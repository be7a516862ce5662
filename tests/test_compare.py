"""The same-NFE comparison: TeaCache's per-sample rule, and `budcache compare` on the demo model."""

import json

import pytest
import torch

from budcache.baselines import teacache
from budcache.cli import main
from budcache.demo.problem import demo_denoisers, demo_inputs, demo_source
from budcache.evaluation import compare, report
from budcache.sampling import linear_sigmas
from budcache.search import SearchConfig

K = 8


@pytest.fixture(scope="module")
def rescaled(demo_model):
    noise, labels = demo_inputs(6, 3)
    with demo_denoisers(demo_model, "residual") as make, teacache.indicator(demo_model.transformer) as signal:
        rescale = teacache.fit_rescaler([(make(labels), noise)], signal, linear_sigmas(K))
        yield make, signal, noise, labels, rescale


@torch.no_grad()
def test_teacache_rule(rescaled):
    make, signal, noise, labels, rescale = rescaled
    assert rescale.order == 4
    sigmas = linear_sigmas(K)
    _, nfe = teacache.sample(make(labels), signal, noise, sigmas, rescale, [-1.0] * 6)
    assert nfe.tolist() == [K] * 6  # nothing is ever below a negative threshold
    _, nfe = teacache.sample(make(labels), signal, noise, sigmas, rescale, [1e9] * 6)
    assert nfe.tolist() == [2] * 6  # first and last steps always compute
    thresholds = [0.05, 0.1, 0.2, 0.05, 0.1, 0.2]
    x, nfe = teacache.sample(make(labels), signal, noise, sigmas, rescale, thresholds, "extrapolate")
    for i in (1, 5):  # a batched run gives every sample what it gets alone
        xi, ni = teacache.sample(
            make(labels[i : i + 1]), signal, noise[i : i + 1], sigmas, rescale, [thresholds[i]], "extrapolate"
        )
        assert ni.item() == nfe[i].item() and torch.allclose(xi[0], x[i], atol=1e-5)


@pytest.fixture(scope="module")
def rows():
    with demo_source(steps=K, calibration=4, validation=0, held_out=6, seed=1) as problem:
        return compare.compare(
            problem,
            [3, 5],
            ("repeat",),
            SearchConfig(strategy="classic", iterations=15, starts=1, kicks=0),
            thresholds=torch.logspace(-2, 0.5, 12).tolist(),
            progress=False,
            align_epochs=2,
        )


def test_every_policy_at_matched_nfe(rows):
    rows, images = rows
    for b in (3, 5):
        at = {r.method: r for r in rows if r.budget == b}
        assert {
            "budcache",
            "uniform / FORA",
            "TaylorSeer",
            "MagCache",
            "LeMiCa",
            "TeaCache (global threshold)",
            "TeaCache (per-sample threshold)",
            f"plain {b}-step Euler",
            f"plain {b}-step AB2",
            "budcache + aligned sigmas",
            f"plain {b}-step Euler, aligned sigmas",
        } == set(at)
        for name in ("budcache", "uniform / FORA", "TaylorSeer", "LeMiCa", f"plain {b}-step Euler"):
            assert at[name].nfe_mean == b and at[name].nfe_sd == 0 and at[name].mask.count("#") in (0, b)
        per_sample = at["TeaCache (per-sample threshold)"]
        assert per_sample.nfe_max <= b or per_sample.nfe_min == per_sample.nfe_max
        assert all(0 <= r.accuracy <= 1 and r.psnr > 10 for r in at.values())
        assert images[f"B={b} budcache [repeat]"].shape == images["full"].shape


def test_table_sorted_by_quality(rows):
    text = report.table(rows[0])
    block = [line for line in text.split("\n\n")[0].splitlines()[2:] if line.strip()]
    by_psnr = sorted((r for r in rows[0] if r.budget == 3), key=lambda r: -r.psnr)
    assert [line[4:38].strip() for line in block] == [r.method for r in by_psnr]


def test_cli_compare_writes_everything(tmp_path):
    out = tmp_path / "cmp"
    main(
        [
            "--threads",
            "1",
            "compare",
            "--model",
            "demo",
            "--steps",
            str(K),
            "--budgets",
            "3,4",
            "--rules",
            "repeat",
            "--calib",
            "4",
            "--held-out",
            "5",
            "--iterations",
            "10",
            "--starts",
            "1",
            "--kicks",
            "0",
            "--no-progress",
            "--out",
            str(out),
        ]
    )
    for name in ("table.txt", "results.csv", "results.json", "quality_vs_nfe.png", "samples_B3.png", "samples_B4.png"):
        assert (out / name).exists(), name
    records = json.loads((out / "results.json").read_text())
    assert {r["budget"] for r in records} == {3, 4} and all("nfe_mean" in r for r in records)
    with pytest.raises(SystemExit, match="--budgets"):
        main(["compare", "--budgets", "0,40", "--out", str(tmp_path / "x")])


def test_compare_a_pipeline_from_the_command_line(tmp_path):
    """Real text-to-image pipeline saved to disk (tiny FLUX with text encoders), true CFG: two
    calls per step, per-branch caches, TeaCache deciding on the conditional call."""
    from tests.fixtures.tiny_text import save_tiny_flux_pipeline

    folder = save_tiny_flux_pipeline(tmp_path / "flux")
    (tmp_path / "calib.txt").write_text("a red square\na blue circle\n")
    (tmp_path / "eval.txt").write_text("a green triangle\na cat\na house\n")
    out = tmp_path / "cmp"
    main(
        [
            "--threads",
            "1",
            "compare",
            "--pipeline",
            str(folder),
            "--prompts",
            str(tmp_path / "calib.txt"),
            "--held-out-prompts",
            str(tmp_path / "eval.txt"),
            "--steps",
            "6",
            "--budgets",
            "3",
            "--rules",
            "extrapolate",
            "--height",
            "16",
            "--width",
            "16",
            "--negative-prompt",
            "blurry",
            "--call",
            "true_cfg_scale=2",
            "--call",
            "max_sequence_length=16",
            "--iterations",
            "10",
            "--starts",
            "1",
            "--kicks",
            "0",
            "--no-progress",
            "--out",
            str(out),
        ]
    )
    records = json.loads((out / "results.json").read_text())
    by = {r["method"]: r for r in records}
    assert by["budcache"]["nfe_mean"] == 3 and by["budcache"]["ssim"] is None
    assert by["TeaCache (per-sample threshold)"]["nfe_max"] <= 3 or by["TeaCache (per-sample threshold)"]["nfe_sd"] == 0
    assert (out / "quality_vs_nfe.png").exists() and not list(out.glob("samples_B*.png"))
    assert all(r["psnr"] > 0 for r in records)


def test_results_depend_only_on_the_seed(capsys):
    def run():
        with demo_source(steps=6, calibration=3, validation=0, held_out=4, seed=2) as problem:
            rows, _ = compare.compare(
                problem,
                [3],
                ("repeat",),
                SearchConfig(strategy="classic", iterations=5, starts=1, kicks=0),
                thresholds=[0.05, 0.2, 1.0],
                progress=False,
            )
        return [(r.method, r.mask, r.psnr, r.nfe_mean) for r in rows]

    assert run() == run()
    assert "LPIPS skipped" in capsys.readouterr().out or compare.lpips_available()


def test_compare_and_frontier_under_unipc(tmp_path):
    """Under a multistep solver the plain row is that solver with B steps, and the frontier runs."""
    out = tmp_path / "cmp"
    main(
        [
            "--threads",
            "1",
            "compare",
            "--scheduler",
            "unipc",
            "--steps",
            "6",
            "--budgets",
            "3",
            "--rules",
            "extrapolate",
            "--calib",
            "3",
            "--held-out",
            "4",
            "--iterations",
            "5",
            "--no-progress",
            "--out",
            str(out),
        ]
    )
    methods = {r["method"] for r in json.loads((out / "results.json").read_text())}
    assert {"budcache", "plain 3-step UniPCMultistep", "TeaCache (global threshold)"} <= methods
    assert "UniPC (flow) 3" not in methods  # the source's own solver is not listed twice
    main(
        [
            "--threads",
            "1",
            "frontier",
            "--scheduler",
            "dpm",
            "--steps",
            "6",
            "--budgets",
            "2..3",
            "--calib",
            "3",
            "--held-out",
            "4",
            "--iterations",
            "5",
            "--no-progress",
            "--out",
            str(tmp_path / "fr"),
        ]
    )
    rows = json.loads((tmp_path / "fr" / "frontier.json").read_text())["rows"]
    assert [r["budget"] for r in rows] == [2, 3] and all("plain DPMSolverMultistep" in r for r in rows)


def test_quality_vs_nfe_draws_one_line_per_method_across_budgets(tmp_path, monkeypatch):
    """Every plain solver, the plan and the uniform mask keep one legend entry across budgets."""
    from budcache.evaluation import plots
    from budcache.evaluation.report import Row

    names = lambda b: [
        f"plain {b}-step Euler",
        f"plain {b}-step AB2",
        f"UniPC (flow) {b}",  # noqa: E731
        f"DPM-Solver++ 2M (flow) {b}",
        "plan (extrapolate)",
        "uniform mask",
    ]
    assert {plots.series(m, 8) for m in names(8)} == {plots.series(m, 12) for m in names(12)}
    assert len({plots.series(m, 8) for m in names(8)}) == 6 and plots.series("plain 10-step AB2", 10) == "plain AB2"
    rows = [Row(b, m, "-", b, 0, b, b, 1e-3, 30.0 + b, None) for b in (8, 12) for m in names(b)]
    figures = []
    save = plots.save
    monkeypatch.setattr(plots, "save", lambda fig, path: figures.append(fig) or save(fig, path))
    plots.plot_quality_vs_nfe(rows, tmp_path / "q.png")
    labels = [t.get_text() for t in figures[0].axes[0].get_legend().get_texts()]
    assert sorted(labels) == sorted({plots.series(m, 8) for m in names(8)})
