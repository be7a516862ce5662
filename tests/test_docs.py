"""The README stays short, the documentation states results rather than history, its links resolve, and every
public name has a docstring (the API reference is generated from them). The examples themselves run through
Sybil (``conftest.py`` at the repository root); ``make docs`` builds the site with ``mkdocs build --strict``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import budcache

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
HISTORY = re.compile(r"\b(issue|issues|session|sessions)\b|#\d+\b", re.IGNORECASE)


def test_the_readme_is_at_most_12000_bytes() -> None:
    size = len(README.read_bytes())
    assert size <= 12_000, f"README.md is {size} bytes; move detail to docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_page_speaks_of_history(page: Path) -> None:
    """Results are stated as measurements (command, machine, date), not as who did what when."""
    hits = [
        f"{page.relative_to(ROOT)}:{n}: {line.strip()}"
        for n, line in enumerate(page.read_text().splitlines(), 1)
        if HISTORY.search(line)
    ]
    assert not hits, "\n".join(hits)


def test_every_docs_link_of_the_readme_exists() -> None:
    links = re.findall(r"\]\((docs/[^)#\s]+\.md)(?:#[^)]*)?\)", README.read_text())
    assert links, "the README links to no docs page"
    missing = sorted({link for link in links if not (ROOT / link).is_file()})
    assert not missing, missing


def _documented() -> list[tuple[str, object]]:
    """Every name of ``budcache.__all__`` and every object the API page renders (``::: dotted.name``), with the
    public methods and properties of the classes among them."""
    import importlib
    import inspect

    names = [f"budcache.{n}" for n in budcache.__all__]
    names += re.findall(r"^::: (\S+)", (ROOT / "docs" / "api.md").read_text(), flags=re.M)
    objects = []
    for name in dict.fromkeys(names):
        module, _, attr = name.rpartition(".")
        try:
            obj = getattr(importlib.import_module(module), attr) if module else importlib.import_module(name)
        except (ImportError, AttributeError):
            obj = importlib.import_module(name)
        objects.append((name, obj))
        if inspect.isclass(obj):
            for member, value in vars(obj).items():
                value = value.fget if isinstance(value, property) else value
                if not member.startswith("_") and inspect.isfunction(value):
                    objects.append((f"{name}.{member}", value))
    return objects


def test_every_public_name_has_a_docstring() -> None:
    """What the API page renders and what ``budcache`` exports is documented, down to the classes' methods."""
    lacking = [name for name, obj in _documented() if not (getattr(obj, "__doc__", None) or "").strip()]
    assert not lacking, f"{', '.join(lacking)} lack a docstring"
