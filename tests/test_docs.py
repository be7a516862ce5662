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


def test_every_public_name_has_a_docstring() -> None:
    lacking = [name for name in budcache.__all__ if not (getattr(budcache, name).__doc__ or "").strip()]
    assert not lacking, f"budcache.{', budcache.'.join(lacking)} lack a docstring"
