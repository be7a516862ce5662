"""`budcache search --pipeline PATH --prompts FILE` on a real diffusers pipeline saved to disk (tiny, offline)."""

import pytest
from diffusers import DiffusionPipeline, FluxTransformer2DModel

import budcache
from budcache.calibration.prompts import read_prompts
from budcache.cli import main
from budcache.plan import PlanError
from tests.fixtures.tiny import tiny_flux_pipeline
from tests.fixtures.tiny_text import quiet, save_tiny_flux_pipeline

STEPS, BUDGET = 8, 3


def test_search_a_saved_pipeline_from_the_command_line(tmp_path, capsys):
    folder = save_tiny_flux_pipeline(tmp_path / "flux")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# calibration\na red square\n\na blue circle\n")
    out = tmp_path / "plan.json"
    main(
        [
            "search",
            "--pipeline",
            str(folder),
            "--prompts",
            str(prompts),
            "--budget",
            str(BUDGET),
            "--steps",
            str(STEPS),
            "--height",
            "16",
            "--width",
            "16",
            "--call",
            "max_sequence_length=16",
            "--iterations",
            "20",
            "--starts",
            "1",
            "--kicks",
            "0",
            "--no-progress",
            "--out",
            str(out),
        ]
    )
    assert "saved" in capsys.readouterr().out and out.with_suffix(".history.png").exists()
    plan = budcache.CachePlan.load(out)
    assert plan.record.calibration_size == 2 and sum(plan.mask) == BUDGET
    with quiet():
        pipe = DiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    call = dict(height=16, width=16, max_sequence_length=16, output_type="latent")
    with budcache.apply(pipe, plan) as handle:
        pipe("a green triangle", num_inference_steps=STEPS, **call)
        assert handle.summary() == {"cond": {"computed": BUDGET, "reused": STEPS - BUDGET}}
        with pytest.raises(PlanError, match=f"searched for {STEPS} steps"):
            pipe("a green triangle", num_inference_steps=STEPS + 1, **call)
    deeper = FluxTransformer2DModel.from_config({**pipe.transformer.config, "num_layers": 2})
    with pytest.raises(PlanError, match="another config"):
        budcache.apply(tiny_flux_pipeline(deeper), plan)


def test_search_needs_prompts_for_a_pipeline(tmp_path):
    with pytest.raises(SystemExit, match="--prompts"):
        main(["search", "--pipeline", str(tmp_path), "--budget", "3", "--out", str(tmp_path / "p.json")])
    with pytest.raises(SystemExit, match="own scheduler"):
        main(
            [
                "search",
                "--pipeline",
                str(tmp_path),
                "--scheduler",
                "unipc",
                "--prompts",
                str(tmp_path / "p.txt"),
                "--budget",
                "3",
                "--out",
                str(tmp_path / "p.json"),
            ]
        )


def test_prompt_files(tmp_path):
    (tmp_path / "a.jsonl").write_text('"a cat"\n{"prompt": "a dog", "negative_prompt": "blur"}\n\n{"prompt": "x"}\n')
    assert read_prompts(tmp_path / "a.jsonl") == ["a cat", {"prompt": "a dog", "negative_prompt": "blur"}, "x"]
    (tmp_path / "a.csv").write_text("prompt,negative_prompt\na cat,\na dog,blur\n")
    assert read_prompts(tmp_path / "a.csv") == ["a cat", {"prompt": "a dog", "negative_prompt": "blur"}]
    (tmp_path / "bad.jsonl").write_text('{"text": "a cat"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        read_prompts(tmp_path / "bad.jsonl")
    (tmp_path / "bad.csv").write_text("text\na cat\n")
    with pytest.raises(ValueError, match="'prompt' column"):
        read_prompts(tmp_path / "bad.csv")
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(ValueError, match="no prompts"):
        read_prompts(tmp_path / "empty.txt")
    with pytest.raises(ValueError, match=".txt, .jsonl or .csv"):
        (tmp_path / "p.yaml").write_text("x")
        read_prompts(tmp_path / "p.yaml")


def test_frontier_and_align_a_saved_pipeline_from_the_command_line(tmp_path, capsys):
    """`frontier` and `align` take --pipeline exactly like `search`: the demo is one model source among others."""
    import json

    folder = save_tiny_flux_pipeline(tmp_path / "flux")
    for name, text in (
        ("calib.txt", "a red square\na blue circle\n"),
        ("val.txt", "a green star\n"),
        ("held.txt", "a grey cat\na black dog\n"),
    ):
        (tmp_path / name).write_text(text)
    source = [
        "--pipeline",
        str(folder),
        "--prompts",
        str(tmp_path / "calib.txt"),
        "--steps",
        "6",
        "--height",
        "16",
        "--width",
        "16",
        "--call",
        "max_sequence_length=16",
        "--no-progress",
    ]
    main(
        [
            "frontier",
            *source,
            "--held-out-prompts",
            str(tmp_path / "held.txt"),
            "--budgets",
            "2..3",
            "--iterations",
            "10",
            "--out",
            str(tmp_path / "fr"),
        ]
    )
    rows = json.loads((tmp_path / "fr" / "frontier.json").read_text())["rows"]
    assert [r["budget"] for r in rows] == [2, 3] and all(r["budcache"] > 0 for r in rows)
    assert all(
        set(r["image"]) == {"budcache", "uniform mask", "plain Euler", "plain AB2"} for r in rows
    )  # FLUX decodes
    assert all(s["psnr"] > 0 and -1 <= s["ssim"] <= 1 for r in rows for s in r["image"].values())
    plan = budcache.CachePlan.load(tmp_path / "fr" / "plan_B3.json")
    assert plan.model["class"] == "FluxTransformer2DModel" and plan.sigmas is not None
    main(
        [
            "align",
            str(tmp_path / "fr" / "plan_B3.json"),
            *source,
            "--validation-prompts",
            str(tmp_path / "val.txt"),
            "--epochs",
            "3",
            "--out",
            str(tmp_path / "aligned.json"),
        ]
    )
    assert "validation MSE" in capsys.readouterr().out
    aligned = budcache.CachePlan.load(tmp_path / "aligned.json")
    assert aligned.mask == plan.mask and len(aligned.sigmas) == 7 and aligned.sigmas[0] == plan.sigmas[0]
    with pytest.raises(SystemExit, match="--held-out-prompts"):
        main(["frontier", *source, "--budgets", "2..3", "--out", str(tmp_path / "x")])
