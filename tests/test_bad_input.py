"""Every bad invocation of every subcommand is refused before anything is loaded or computed: exit 2,
one line on stderr that names the option or file and what to change, no traceback."""

import fcntl
import json
import subprocess
import sys
from pathlib import Path

import pytest

import budcache.demo.run  # noqa: F401  (imported before the loaders are patched: it binds demo_source)
from budcache.cli import main
from budcache.plan import CachePlan
from budcache.sampling import linear_sigmas
from budcache.search.checkpoint import FORMAT, _checksum, lock_path
from tests.fixtures.tiny_text import save_tiny_flux_pipeline

ROOT = Path(__file__).resolve().parents[1]


class WorkStarted(BaseException):
    """Raised by the patched loaders: a refused invocation must never get there (not an Exception, so
    the CLI's own handler cannot swallow it)."""


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Placeholders of the table: a tiny FluxPipeline folder, prompt files, plans, a checkpoint."""
    d = tmp_path_factory.mktemp("bad")
    plan8 = CachePlan(num_steps=8, budget=3, mask=[1, 0, 0, 1, 0, 0, 1, 0], sigmas=linear_sigmas(8))
    texts = {
        "prompts.txt": "a red square\na blue circle\n",
        "empty.txt": "",
        "comments.txt": "# only\n\n# comments\n",
        "yaml_prompts.yaml": "- a cat\n",
        "bad.jsonl": '{"text": "a cat"}\n',
        "badcsv.csv": "text\na cat\n",
        "extra.jsonl": '{"prompt": "a cat", "bogus_arg": 1}\n',
        "corrupt.json": '{"num_steps": 8, "budget"',
        "ckpt_bad.json": "{}",
        "a_file": "x",
        "typed.json": json.dumps({**plan8.to_dict(), "budget": "3"}),
    }
    for name, text in texts.items():
        (d / name).write_text(text)
    plan8.save(d / "plan8.json")
    CachePlan(num_steps=10, budget=3, mask=[1, 0, 0, 1, 0, 0, 1, 0, 0, 0]).save(d / "plan10.json")
    CachePlan(
        num_steps=8, budget=3, mask=plan8.mask, model={"class": "SD3Transformer2DModel", "fingerprint": "x"}
    ).save(d / "plan8_sd3.json")
    CachePlan(num_steps=8, budget=3, mask=plan8.mask, sigmas=plan8.sigmas, boundary_ratio=0.9).save(
        d / "plan8_wan22.json"
    )
    CachePlan(
        num_steps=8, budget=3, mask=plan8.mask, model={"class": "FluxTransformer2DModel", "fingerprint": "y"}
    ).save(d / "plan8_flux.json")
    ckpt = {"format": "budcache-search-checkpoint/1", "identity": {"budget": 4}, "forwards": 0, "memo": {}}
    (d / "ckpt_b4.json").write_text(json.dumps(ckpt))
    unfinished = {
        "format": FORMAT,
        "identity": {"budget": 3},
        "forwards": 80,
        "finished": False,
        "memo": {"1,0,0,1,0,0,1,0": 0.5},
    }
    (d / "ckpt_unfinished.json").write_text(json.dumps({**unfinished, "checksum": _checksum(unfinished)}))
    (d / "empty_dir").mkdir()
    return {
        "tmp": str(d),
        "flux": str(save_tiny_flux_pipeline(d / "flux")),
        "out": str(d / "out" / "plan.json"),
        "empty_dir": str(d / "empty_dir"),
        **{
            Path(n).stem: str(d / n)
            for n in [
                *texts,
                "plan8.json",
                "plan10.json",
                "plan8_sd3.json",
                "plan8_flux.json",
                "plan8_wan22.json",
                "ckpt_b4.json",
                "ckpt_unfinished.json",
            ]
        },
    }


@pytest.fixture
def no_work(monkeypatch, tmp_path):
    """Loading the demo or a pipeline, calibrating, searching or running the demo raises WorkStarted."""

    def refuse(*args, **kwargs):
        raise WorkStarted

    for target in (
        "budcache.cli.commands.open_source",
        "budcache.cli.launch.load_pipeline",
        "budcache.demo.problem.demo_source",
        "budcache.cli.commands.search_source",
        "budcache.demo.run.run_demo",
        "budcache.cli.launch.calibrate_shard",
    ):
        monkeypatch.setattr(target, refuse)
    monkeypatch.chdir(tmp_path)  # default output folders (compare-out, ...) land here


SEARCH = "search --budget 3 --out {out}"
PIPE = "--pipeline {flux} --prompts {prompts}"
BAD = [
    # the whole command line
    ("--threads 0 show {plan8}", "--threads: must be at least 1"),
    ("nosuch", "invalid choice: 'nosuch'"),
    ("search --out {out}", "required: --budget"),
    # search: output paths
    ("search --budget 3 --out {tmp}", "is a folder; name a file"),
    ("search --budget 3 --out /sys/budcache/plan.json", "--out: cannot write in /sys/budcache"),
    ("search --budget 3 --out {a_file}/plan.json", "--out: {a_file} is a file, not a folder"),
    (SEARCH + " --history {tmp}", "--history {tmp} is a folder"),
    (SEARCH + " --checkpoint {tmp}", "--checkpoint {tmp} is a folder"),
    (SEARCH + " --checkpoint {out}", "--checkpoint {out} is also --out; give each output its own file"),
    (SEARCH + " --history {tmp}/history.txt", "--history {tmp}/history.txt: a figure is written as .png"),
    # search: numbers
    (SEARCH + " --starts 0", "--starts: must be at least 1, got 0"),
    (SEARCH + " --screen 2", "--screen: must be a finite number above 0 and at most 1, got 2"),
    (SEARCH + " --screen 0", "--screen: must be a finite number above 0 and at most 1, got 0"),
    (SEARCH + " --max-forwards 0", "--max-forwards: must be a finite number above 0, got 0"),
    (SEARCH + " --reach -1", "--reach: must be at least 0, got -1"),
    (SEARCH + " --iterations -1", "--iterations: must be at least 0"),
    (SEARCH + " --kicks -1", "--kicks: must be at least 0"),
    (SEARCH + " --checkpoint-every 0", "--checkpoint-every: must be at least 1"),
    (SEARCH + " --batch-candidates 0", "--batch-candidates: must be at least 1"),
    (SEARCH + " --calib 0", "--calib: must be at least 1"),
    (SEARCH + " --steps -3", "--steps: must be at least 1, got -3"),
    (SEARCH + " --state-mb -1", "--state-mb: must be a finite number at least 0"),
    ("search --budget 30 --out {out}", "--budget 30 exceeds --steps 28"),
    ("search --budget 0 --out {out}", "--budget: must be at least 1"),
    ("search --budget abc --out {out}", "--budget: expects an integer, got 'abc'"),
    (SEARCH + " --forced-prefix 5", "--forced-prefix 5: 5 steps must compute"),
    (SEARCH + " --reuse blocks", "--reuse: invalid choice"),
    # search: resume
    (SEARCH + " --resume", "--resume: no checkpoint at"),
    (SEARCH + " --resume --checkpoint {ckpt_bad}", "not a readable search checkpoint"),
    (SEARCH + " --resume --checkpoint {ckpt_b4}", "a search for budget 4, not 3"),
    (SEARCH + " --checkpoint {ckpt_unfinished}", "holds an unfinished search (evaluations saved: 1); add --resume"),
    # search: the model source
    (SEARCH + " --model flux", "--model 'flux': use --model demo, or --pipeline"),
    (SEARCH + " --prompts {prompts}", "--prompts applies to --pipeline"),
    (SEARCH + " --call max_sequence_length=16", "--call applies to --pipeline"),
    (SEARCH + " --height 16", "--height applies to --pipeline"),
    (SEARCH + " --validation-prompts {prompts}", "--validation-prompts applies to --pipeline"),
    (SEARCH + " --held-out-prompts {prompts}", "unrecognized arguments: --held-out-prompts"),
    (SEARCH + " --pipeline {tmp}/no/such/folder --prompts {prompts}", "no such folder, and not a hub id"),
    (SEARCH + " --pipeline {empty_dir} --prompts {prompts}", "no model_index.json in it"),
    (SEARCH + " --pipeline {prompts} --prompts {prompts}", "is a file; name a pipeline folder"),
    (SEARCH + " --pipeline {flux}", "--pipeline needs --prompts FILE"),
    (SEARCH + " --pipeline {flux} --prompts {tmp}/missing.txt", "--prompts {tmp}/missing.txt does not exist"),
    (SEARCH + " --pipeline {flux} --prompts {empty}", "holds no prompts"),
    (SEARCH + " --pipeline {flux} --prompts {comments}", "holds no prompts"),
    (SEARCH + " --pipeline {flux} --prompts {yaml_prompts}", "prompt files are .txt, .jsonl or .csv"),
    (SEARCH + " --pipeline {flux} --prompts {bad}", "bad.jsonl:1: expected a string or an object"),
    (SEARCH + " --pipeline {flux} --prompts {badcsv}", "needs a 'prompt' column"),
    (SEARCH + " " + PIPE + " --validation-prompts {empty}", "--validation-prompts: {empty} holds no prompts"),
    (SEARCH + " " + PIPE + " --call nosuch_arg=1", "FluxPipeline takes no argument 'nosuch_arg'"),
    (SEARCH + " " + PIPE + " --call max_sequence_lenght=16", "did you mean 'max_sequence_length'?"),
    (SEARCH + " " + PIPE + " --call num_inference_steps=4", "budcache sets 'num_inference_steps' itself (use --steps)"),
    (SEARCH + " " + PIPE + " --call novalue", "--call expects KEY=VALUE, got 'novalue'"),
    (SEARCH + " --pipeline {flux} --prompts {extra}", "FluxPipeline takes no argument 'bogus_arg'"),
    (SEARCH + " " + PIPE + " --calib 4", "--calib counts demo samples"),
    (SEARCH + " " + PIPE + " --scheduler unipc", "a --pipeline always runs its own scheduler"),
    (SEARCH + " " + PIPE + " --device nonsense", "--device 'nonsense' is not a torch device"),
    (SEARCH + " " + PIPE + " --device cuda:7", "--device cuda:7"),
    (SEARCH + " " + PIPE + " --guidance-scale nan", "--guidance-scale: must be a finite number"),
    # frontier
    ("frontier --budgets abc", "--budgets: takes a comma list"),
    ("frontier --budgets 10..4", "10..4 is an empty range; write the smaller budget first (4..10)"),
    ("frontier --budgets 0..3", "budgets are at least 1"),
    ("frontier --budgets 1..999999999", "far wider than any step count"),
    ("frontier --budgets 4..40", "--budgets 29 exceeds --steps 28"),
    ("frontier --out {a_file}", "--out {a_file} is a file; name a folder"),
    ("frontier " + PIPE, "frontier --pipeline needs --held-out-prompts"),
    (
        "frontier " + PIPE + " --held-out-prompts {prompts} --validation-prompts {prompts}",
        "--validation-prompts: frontier uses no validation set",
    ),
    # align
    ("align {tmp}/missing.json --out {out}", "no such plan file"),
    ("align {tmp} --out {out}", "is a folder; name a plan file"),
    ("align {corrupt} --out {out}", "not a valid JSON plan file"),
    ("align {plan8} --out {out} --steps 10", "--steps 10 disagrees with the plan's 8 steps"),
    ("align {plan8} --out {tmp}", "--out {tmp} is a folder"),
    ("align {plan8} --out {out} --epochs 0", "--epochs: must be at least 1"),
    ("align {plan8} --out {out} --lr 0", "--lr: must be a finite number above 0"),
    ("align {plan8} --out {out} --model nosuch", "--model 'nosuch': use --model demo"),
    ("align {plan8} --out {out} --validation -1", "--validation: must be at least 0"),
    ("align {plan8_wan22} --out {out} --model-times", "--model-times: this plan is for two experts"),
    ("align {plan8} --out {out} --resume", "--resume: no checkpoint at"),
    ("align {plan8} --out {out} --checkpoint {tmp}", "--checkpoint {tmp} is a folder"),
    # show
    ("show {tmp}", "is a folder; name a plan file"),
    ("show {tmp}/missing.json", "no such plan file"),
    ("show {typed}", "field 'budget' must be int"),
    ("show {plan8} --png {tmp}", "--png {tmp} is a folder"),
    ("show {plan8} --png {tmp}/plan.json", "--png {tmp}/plan.json: a figure is written as .png"),
    # compare
    ("compare {plan8} {plan10}", "plan10.json is a plan for 10 steps"),
    ("compare {plan8} --steps 10", "--steps 10 disagrees with the plan's 8 steps"),
    ("compare {plan8} --budgets 4..6", "--budgets sets up the policies compare searches; saved plans are scored"),
    ("compare {plan8} --iterations 50", "drop --iterations"),
    ("compare {plan8_sd3} {plan8_flux}", "plan8_flux.json was searched for another model than"),
    ("compare --budgets 0,40", "--budgets: budgets are at least 1"),
    ("compare --budgets 6,40", "--budgets 40 exceeds --steps 28"),
    ("compare --out {a_file}", "--out {a_file} is a file"),
    ("compare --rules bogus", "--rules: invalid choice"),
    ("compare --align-epochs -1", "--align-epochs: must be at least 0"),
    ("compare --held-out 0", "--held-out: must be at least 1"),
    # demo
    ("demo --budgets 30", "--budgets 30 exceeds --steps 28"),
    ("demo --budgets 6,8 --steps 7", "--budgets 8 exceeds --steps 7"),
    ("demo --out {a_file}", "--out {a_file} is a file"),
    ("demo --calib 0", "--calib: must be at least 1"),
    ("demo --held-out 0", "--held-out: must be at least 1"),
    ("demo --steps 0", "--steps: must be at least 1"),
]
COMMANDS = {"search", "frontier", "align", "show", "compare", "demo"}


def test_the_table_covers_every_subcommand():
    commands = {next(w for w in args.split() if not w.startswith("-") and not w.isdigit()) for args, _ in BAD}
    assert COMMANDS <= commands and len(BAD) >= 40


@pytest.mark.parametrize("args, message", BAD, ids=[args for args, _ in BAD])
def test_bad_invocation_is_refused_in_one_line_before_any_work(args, message, files, no_work, capsys):
    argv = [w.format(**files) for w in args.split()]
    with pytest.raises(SystemExit) as exit:
        main(argv)
    err = capsys.readouterr().err
    assert exit.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("budcache") and ": error: " in lines[0], err
    assert "Traceback" not in err and message.format(**files) in lines[0]


@pytest.mark.parametrize(
    "args",
    [
        "demo --budgets 6,8",
        "demo --budgets 6 8",
        "demo --budgets 4..6",
        "compare --budgets 4..6",
        "frontier --budgets 3 5",
        "search --budget 3 --out {out} " + PIPE + " --call max_sequence_length=16",
        "compare {plan8} {plan8_sd3}",
        "align {plan8} --out {out} --steps 8",
    ],
)
def test_good_invocations_pass_the_checks(args, files, no_work):
    with pytest.raises(WorkStarted):
        main([w.format(**files) for w in args.split()])


def test_a_second_search_on_the_same_checkpoint_is_refused(files, no_work, tmp_path, capsys):
    ckpt = tmp_path / "shared.checkpoint.json"
    with open(lock_path(ckpt), "w") as held:  # another search holds the lock
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(SystemExit) as exit:
            main(["search", "--budget", "3", "--out", str(tmp_path / "p.json"), "--checkpoint", str(ckpt)])
    assert exit.value.code == 2 and "is in use by another search" in capsys.readouterr().err
    with pytest.raises(WorkStarted):  # released: the next search goes ahead
        main(["search", "--budget", "3", "--out", str(tmp_path / "p.json"), "--checkpoint", str(ckpt)])


@pytest.mark.parametrize("debug", [None, "--debug", "BUDCACHE_DEBUG"])
def test_an_unexpected_error_is_one_line_unless_debugging(debug, monkeypatch, capsys, tmp_path):
    def broken(*args, **kwargs):
        raise RuntimeError("something\nbroke")

    monkeypatch.setattr("budcache.cli.commands.open_source", broken)
    if debug == "BUDCACHE_DEBUG":
        monkeypatch.setenv("BUDCACHE_DEBUG", "1")
    with pytest.raises(SystemExit) as exit:
        main([*(["--debug"] if debug == "--debug" else []), "frontier", "--out", str(tmp_path / "f")])
    err = capsys.readouterr().err
    assert exit.value.code == 1
    assert err.strip().splitlines()[-1] == (
        "budcache: error: unexpected RuntimeError: something broke (the traceback: --debug or BUDCACHE_DEBUG=1)"
    )
    assert ("Traceback" in err) == (debug is not None)


def test_the_real_exit_code_and_stderr_of_a_refused_command(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "budcache", "show", str(tmp_path)], cwd=ROOT, capture_output=True, text=True
    )
    assert (
        r.returncode == 2
        and r.stderr == f"budcache show: error: {tmp_path} is a folder; name a plan file (.json) in it\n"
    )


def test_a_hub_id_offline_and_not_cached_is_refused(files, no_work, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SystemExit) as exit:
        main(
            [
                "search",
                "--budget",
                "3",
                "--out",
                files["out"],
                "--pipeline",
                "nobody/no-such-model",
                "--prompts",
                files["prompts"],
            ]
        )
    assert exit.value.code == 2 and "the hub gave no model_index.json" in capsys.readouterr().err
