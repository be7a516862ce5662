"""Calibration prompt files: ``.txt`` (one prompt per line), ``.jsonl`` or ``.csv``."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any


def read_prompts(path: str | Path) -> list[str | dict[str, Any]]:
    """Prompts, or dicts of per-prompt call arguments.

    ``.txt``: one prompt per line, blank lines and ``#`` comments skipped. ``.jsonl``: per line a
    string or an object with ``prompt`` and other call arguments (e.g. ``negative_prompt``).
    ``.csv``: a ``prompt`` column; other non-empty columns become call arguments.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        prompts = [
            _jsonl_entry(line, path, i) for i, line in enumerate(path.read_text().splitlines(), 1) if line.strip()
        ]
    elif suffix == ".csv":
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            if "prompt" not in (reader.fieldnames or []):
                raise ValueError(f"{path}: a CSV prompt file needs a 'prompt' column (found {reader.fieldnames})")
            prompts = [{k: v for k, v in row.items() if k and v not in (None, "")} for row in reader]
    elif suffix in (".txt", ""):
        prompts = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    else:
        raise ValueError(f"{path}: prompt files are .txt, .jsonl or .csv, not {suffix}")
    if not prompts:
        raise ValueError(f"{path} holds no prompts")
    return [p["prompt"] if isinstance(p, dict) and p.keys() == {"prompt"} else p for p in prompts]


def _jsonl_entry(line: str, path: Path, number: int) -> str | dict[str, Any]:
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{number}: not JSON ({e.msg})") from None
    if isinstance(entry, str) or (isinstance(entry, dict) and isinstance(entry.get("prompt"), str)):
        return entry
    raise ValueError(f"{path}:{number}: expected a string or an object with a 'prompt' string")
