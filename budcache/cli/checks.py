"""Everything a command can check before it loads or computes anything: output paths, prompt files,
pipeline call arguments, numbers that depend on each other, plan and checkpoint files. Each check
raises :class:`~.run.UsageError` with one line that names the option or file and what to change;
what it resolves (default paths, prompts, budgets, demo defaults) is stored on the namespace."""

from __future__ import annotations

import argparse
import difflib
import inspect
import itertools
import json
import os
import re
import tempfile
from pathlib import Path

from ..align import checkpoint as align_checkpoint
from ..calibration.prompts import read_prompts
from ..errors import CheckpointError
from ..plan import CachePlan
from ..planset import PlanSet, load_plans
from ..search import check_budget
from ..search.checkpoint import hold
from ..search.checkpoint import read as read_checkpoint
from .options import DEMO_STEPS, search_config
from .run import UsageError, one_line

PIPELINE_ONLY = (
    "prompts",
    "validation_prompts",
    "held_out_prompts",
    "height",
    "width",
    "sizes",
    "guidance_scale",
    "negative_prompt",
    "call",
    "dtype",
    "device",
    "cpu_offload",
)
RESERVED_CALL = {
    "prompt": "prompts come from --prompts",
    "num_inference_steps": "use --steps",
    "generator": "use --seed",
    "output_type": "budcache captures latents",
}
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
COMPARE_SEARCH_ONLY = (
    "budgets",
    "rules",
    "magcache",
    "align_epochs",
    "effort",
    "iterations",
    "starts",
    "kicks",
    "batch_candidates",
    "no_hill_climb",
    "forced_prefix",
    "search_rules",
    "state_mb",
)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# -- output paths --------------------------------------------------------------------------------
def _writable_folder(folder: Path, option: str) -> None:
    """Create ``folder`` (and its parents) and prove it writable with a temporary file."""
    blocking = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise UsageError(f"{option}: {blocking} is a file, not a folder; choose another location")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".budcache-probe.")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UsageError(
            f"{option}: cannot write in {folder} ({e.strerror or e}); choose a writable location"
        ) from None


def output_file(path: Path, option: str, example: str = "plan.json") -> None:
    """A file the command will write: not a folder, in a folder that exists (created) and is writable."""
    if path.is_dir():
        raise UsageError(f"{option} {path} is a folder; name a file, e.g. {path / example}")
    _writable_folder(path.parent, option)


def output_figure(path: Path, option: str, example: str) -> None:
    """A figure file: :func:`output_file`, with an extension matplotlib writes."""
    from matplotlib.backend_bases import FigureCanvasBase

    output_file(path, option, example)
    formats = FigureCanvasBase.get_supported_filetypes()
    if path.suffix.lower().lstrip(".") not in formats:
        raise UsageError(
            f"{option} {path}: a figure is written as .png, .pdf, .svg or another of "
            f"{', '.join(sorted(formats))}; name the file with one of those extensions"
        )


def output_folder(path: Path, option: str) -> None:
    """A folder the command will write into: not a file; created; writable."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {path} is a file; name a folder (it is created)")
    _writable_folder(path, option)


# -- the model source ----------------------------------------------------------------------------
def prompts_of(path: Path, option: str) -> list:
    """The whole prompt file, parsed (refused in one line when missing, empty or malformed)."""
    try:
        return read_prompts(path)
    except FileNotFoundError:
        raise UsageError(f"{option} {path} does not exist") from None
    except (ValueError, OSError) as e:
        raise UsageError(f"{option}: {e}") from None


def _hub_index(spec: str) -> Path:
    """The ``model_index.json`` of a hub id: from the local cache, else downloaded (a few hundred bytes,
    what loading fetches first); a hub id that cannot give it is refused."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.utils import logging as hub_logging

    cached = try_to_load_from_cache(spec, "model_index.json")
    if isinstance(cached, str):
        return Path(cached)
    verbosity = hub_logging.get_verbosity()
    hub_logging.set_verbosity_error()  # its retries would print lines of their own
    try:
        return Path(hf_hub_download(spec, "model_index.json"))
    except Exception as e:  # offline, unknown or gated repository, no network: all end the same way
        reason = re.split(r"(?<=[.!?])\s", one_line(str(e)) or type(e).__name__)[0][:200]
        raise UsageError(
            f"--pipeline {spec}: no local folder of that name, and the hub gave no model_index.json "
            f"({reason}); check the name, the network and HF_TOKEN, or name a local folder"
        ) from None
    finally:
        hub_logging.set_verbosity(verbosity)


def pipeline_class(spec: str) -> str:
    """The pipeline class named by ``model_index.json`` of a local folder or a hub id (nothing else is
    loaded); a path or id that cannot be a pipeline is refused."""
    return model_index(spec)["_class_name"]


def model_index(spec: str) -> dict:
    """``model_index.json`` of a local folder or a hub id, checked to name a pipeline class."""
    path = Path(spec).expanduser()
    if path.is_dir():
        index = path / "model_index.json"
    elif path.exists():
        raise UsageError(f"--pipeline {spec} is a file; name a pipeline folder (with model_index.json) or a hub id")
    elif not HUB_ID.fullmatch(spec):
        raise UsageError(f"--pipeline {spec}: no such folder, and not a hub id (owner/name)")
    else:
        index = _hub_index(spec)
    try:
        content = json.loads(index.read_text())
        name = content["_class_name"]
    except FileNotFoundError:
        raise UsageError(
            f"--pipeline {spec}: no model_index.json in it; name a folder written by save_pretrained, or a hub id"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(f"--pipeline {spec}: {index.name} is not a diffusers model index ({e})") from None
    if not isinstance(name, str):
        raise UsageError(f"--pipeline {spec}: {index.name} names no pipeline class")
    return content


def check_call(class_name: str, keys: dict[str, str]) -> None:
    """Every call argument (``keys``: argument -> where it was given) is one that ``class_name.__call__``
    takes (read from its signature, nothing loaded), and none is one budcache sets itself."""
    for key, where in keys.items():
        if key in RESERVED_CALL:
            raise UsageError(f"{where}: budcache sets {key!r} itself ({RESERVED_CALL[key]})")
    import diffusers

    cls = getattr(diffusers, class_name, None)
    if cls is None:
        return
    params = inspect.signature(cls.__call__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    for key, where in keys.items():
        if key not in params:
            close = difflib.get_close_matches(key, params, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"it takes {', '.join(p for p in params if p != 'self')}"
            raise UsageError(f"{where}: {class_name} takes no argument {key!r}; {hint}")


def call_keys(a: argparse.Namespace, prompts: dict[str, list]) -> dict[str, str]:
    """The call arguments a command passes, each with where it was given."""
    keys = {
        name: flag(name)
        for name in ("height", "width", "guidance_scale", "negative_prompt")
        if getattr(a, name) is not None
    }
    for item in a.call:
        key, sep, _ = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--call expects KEY=VALUE, got {item!r}")
        keys[key] = f"--call {key}"
    for option, entries in prompts.items():
        for entry in entries:
            if isinstance(entry, dict):
                keys.update({k: f"{flag(option)} {getattr(a, option)}" for k in entry if k != "prompt"})
    return keys


def _check_device(device: str | None) -> None:
    import torch

    if device is None:
        return
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise UsageError(f"--device {device!r} is not a torch device (cpu, cuda, cuda:1, mps, ...)") from None
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if parsed.type == "cuda" and not count:
        raise UsageError(f"--device {device}: no CUDA device here; leave --device out or use --device cpu")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= count:
        raise UsageError(f"--device {device}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")


def check_source(
    a: argparse.Namespace, held_out: bool = False, validation: bool = True, steps: int | None = None
) -> None:
    """The model source: demo or pipeline options, not both; prompt files parsed (``a.prompt_lists``);
    call arguments against the pipeline class; the step count (``steps``: a plan's K)."""
    if steps is not None and a.steps is not None and a.steps != steps:
        raise UsageError(f"--steps {a.steps} disagrees with the plan's {steps} steps; leave --steps out")
    a.steps = steps or a.steps or DEMO_STEPS
    a.prompt_lists = {}
    if a.pipeline is None:
        if a.model != "demo":
            raise UsageError(f"--model {a.model!r}: use --model demo, or --pipeline PATH_OR_ID for a diffusers model")
        given = [flag(n) for n in PIPELINE_ONLY if getattr(a, n, None) not in (None, False, [])]
        if given:
            raise UsageError(f"{given[0]} applies to --pipeline; add --pipeline PATH_OR_ID or drop {given[0]}")
        for name, default in a.demo_defaults.items():
            setattr(a, name, default if getattr(a, name) is None else getattr(a, name))
        return
    given = [flag(n) for n in a.demo_defaults if getattr(a, n) is not None]
    if given:
        raise UsageError(
            f"{given[0]} counts demo samples; with --pipeline the prompt files set the samples, drop {given[0]}"
        )
    if getattr(a, "scheduler", "euler") != "euler":
        raise UsageError(
            f"--scheduler {a.scheduler} chooses the demo model's solver; a --pipeline always runs its "
            "own scheduler (replace it in the pipeline's folder to search under another)"
        )
    if a.prompts is None:
        raise UsageError("--pipeline needs --prompts FILE (.txt, .jsonl or .csv) with calibration prompts")
    if held_out and getattr(a, "held_out_prompts", None) is None:
        raise UsageError(f"{a.command} --pipeline needs --held-out-prompts FILE (evaluation prompts)")
    if not validation and a.validation_prompts is not None:
        raise UsageError(f"--validation-prompts: {a.command} uses no validation set; drop it")
    for name in ("prompts", "validation_prompts", "held_out_prompts"):
        if getattr(a, name, None) is not None:
            a.prompt_lists[name] = prompts_of(getattr(a, name), flag(name))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    for name in ("prompts", "validation_prompts"):
        if name in a.prompt_lists and len(a.prompt_lists[name]) < world:
            raise UsageError(
                f"{flag(name)} {getattr(a, name)}: {len(a.prompt_lists[name])} prompts for {world} "
                "processes; give each process at least one"
            )
    if getattr(a, "sizes", None) and (a.height is not None or a.width is not None):
        raise UsageError("--sizes sets the height and width of every calibration call; drop --height/--width")
    _check_device(a.device)
    check_call(pipeline_class(a.pipeline), call_keys(a, a.prompt_lists))


def _budgets(a: argparse.Namespace) -> None:
    """Flatten ``--budgets`` (each value a list) and keep them within --steps."""
    a.budgets = sorted({b for group in a.budgets for b in group})
    over = [b for b in a.budgets if b > a.steps]
    if over:
        raise UsageError(f"--budgets {over[0]} exceeds --steps {a.steps}; a budget is at most the step count")


def _search_settings(a: argparse.Namespace, budgets: list[int]) -> None:
    """The search settings against the smallest budget (forced steps must fit it)."""
    config = search_config(a)
    try:
        check_budget(a.steps, min(budgets), config)
    except ValueError as e:
        raise UsageError(f"--forced-prefix {a.forced_prefix}: {e}") from None


# -- the commands --------------------------------------------------------------------------------
def check_search(a: argparse.Namespace) -> None:
    check_source(a)
    if a.budget > a.steps:
        raise UsageError(f"--budget {a.budget} exceeds --steps {a.steps}; a budget is between 1 and the step count")
    _search_settings(a, [a.budget])
    a.history = a.history or a.out.with_suffix(".history.png")
    a.checkpoint = a.checkpoint or a.out.with_suffix(".checkpoint.json")
    outputs = {"--out": a.out, "--history": a.history, "--checkpoint": a.checkpoint}
    for (one, path), (other, same) in itertools.combinations(outputs.items(), 2):
        if path.resolve() == same.resolve():
            raise UsageError(f"{other} {same} is also {one}; give each output its own file")
    output_file(a.out, "--out")
    output_figure(a.history, "--history", "plan.history.png")
    output_file(a.checkpoint, "--checkpoint", "plan.checkpoint.json")
    with hold(a.checkpoint):  # another search running on it is refused now, not after loading
        pass
    if not a.resume and a.checkpoint.exists():
        _keep_unfinished(a.checkpoint)
    if a.resume:
        if not a.checkpoint.exists():
            raise UsageError(
                f"--resume: no checkpoint at {a.checkpoint}; search without --resume, or name it with --checkpoint"
            )
        saved = read_checkpoint(a.checkpoint, a.steps)
        if saved["identity"].get("budget") != a.budget:
            raise UsageError(
                f"--resume: {a.checkpoint} is a search for budget {saved['identity'].get('budget')}, "
                f"not {a.budget}; use that --budget, or search without --resume"
            )


def _keep_unfinished(path: Path) -> None:
    """Refuse to start afresh over the checkpoint of an interrupted search (its evaluations would go)."""
    try:
        saved = read_checkpoint(path)
    except CheckpointError:
        return  # unreadable: nothing to keep
    if saved.get("finished") is False and saved["memo"]:
        raise UsageError(
            f"--checkpoint {path} holds an unfinished search (evaluations saved: "
            f"{len(saved['memo'])}); add --resume to continue it, or delete it to start afresh"
        )


def check_frontier(a: argparse.Namespace) -> None:
    check_source(a, held_out=True, validation=False)
    _budgets(a)
    _search_settings(a, a.budgets)
    output_folder(a.out, "--out")


def check_demo(a: argparse.Namespace) -> None:
    _budgets(a)
    _search_settings(a, a.budgets)
    output_folder(a.out, "--out")


def check_show(a: argparse.Namespace) -> None:
    a.loaded = load_plans(a.plan)
    if a.png is not None and isinstance(a.loaded, PlanSet):
        raise UsageError(f"--png draws one plan; {a.plan} holds a plan set ({a.loaded.holdings()})")
    if a.png is not None:
        output_figure(a.png, "--png", "plan.png")


def _stage2_refusal(spec: str, class_name: str) -> str | None:
    """Why stage 2 cannot step like the pipeline's scheduler (its config read from a local folder; for a hub id,
    by class only), or None."""
    import diffusers

    from ..sampling.multistep import DIFFERENTIABLE, SUPPORTED, refusal

    if class_name not in DIFFERENTIABLE:
        return f"{SUPPORTED}; this pipeline steps with {class_name}"
    folder = Path(spec).expanduser() / "scheduler"
    return refusal(getattr(diffusers, class_name).from_pretrained(folder)) if folder.is_dir() else None


def check_align(a: argparse.Namespace) -> None:
    a.loaded = CachePlan.load(a.plan)
    check_source(a, steps=a.loaded.num_steps)
    if a.model_times and a.loaded.boundary_ratio is not None:
        raise UsageError(
            "--model-times: this plan is for two experts, whose timesteps pick the expert; align it "
            "without decoupled model times"
        )
    if a.pipeline is not None:
        entry = model_index(a.pipeline).get("scheduler")
        why = _stage2_refusal(a.pipeline, entry[1]) if isinstance(entry, list) and len(entry) == 2 else None
        if why is not None:
            raise UsageError(f"--pipeline {a.pipeline}: {why}; swap in one of those (same shift) and search again")
    output_file(a.out, "--out")
    output_file(a.out.with_suffix(".png"), "--out (its plot)", "aligned.png")
    a.checkpoint = a.checkpoint or a.out.with_suffix(".checkpoint.pt")
    output_file(a.checkpoint, "--checkpoint", "aligned.checkpoint.pt")
    if a.resume and not a.checkpoint.exists():
        raise UsageError(
            f"--resume: no checkpoint at {a.checkpoint}; align without --resume, or name it with --checkpoint"
        )
    if not a.resume and a.checkpoint.exists():  # starting afresh would overwrite an interrupted run's epochs
        stopped = align_checkpoint.unfinished(a.checkpoint)
        if stopped is not None:
            raise UsageError(
                f"--checkpoint {a.checkpoint} holds an unfinished alignment (stopped after {stopped}); "
                "add --resume to go on, or delete it to start afresh"
            )


def check_compare(a: argparse.Namespace) -> None:
    if not a.plans:
        check_source(a, held_out=True, validation=False)
        _budgets(a)
        _search_settings(a, a.budgets)
    else:
        given = [flag(n) for n, default in a.search_defaults.items() if getattr(a, n) != default]
        if given:
            raise UsageError(
                f"{given[0]} sets up the policies compare searches; saved plans are scored as they are, drop {given[0]}"
            )
        a.loaded = [(Path(path), CachePlan.load(path)) for path in a.plans]
        (first, plan), *others = a.loaded
        for path, other in others:
            if other.num_steps != plan.num_steps:
                raise UsageError(
                    f"{path} is a plan for {other.num_steps} steps, {first} for {plan.num_steps}; "
                    "compare plans of one step count together"
                )
            if other.model and plan.model and other.model != plan.model:
                raise UsageError(
                    f"{path} was searched for another model than {first} ({other.model.get('class')} "
                    f"{other.model.get('fingerprint')} vs {plan.model.get('class')} "
                    f"{plan.model.get('fingerprint')}); compare plans of one model together"
                )
        check_source(a, held_out=True, validation=False, steps=plan.num_steps)
    output_folder(a.out, "--out")
