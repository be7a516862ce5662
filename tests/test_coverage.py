"""Every current diffusers DiT family through its real pipeline (tiny random config, offline), and
the coverage table of docs/pipelines.md is exactly what these checks measure."""

from pathlib import Path

import pytest

from tests.fixtures import coverage

README = Path(__file__).parent.parent / "docs" / "pipelines.md"  # the coverage table
SEARCH_UNSUPPORTED = {"LTX-2"}  # a second latent stream (audio) evolves with the video: apply only


@pytest.fixture(scope="module")
def readme_rows():
    return coverage.readme_table(README).splitlines()


@pytest.mark.parametrize("name", list(coverage.FAMILIES))
def test_family(name, readme_rows):
    c = coverage.check(name)
    assert c.exact_budget, (c.branches, c.executions)
    assert c.all_ones_identical and c.removed_identical and c.sigmas_reach
    assert c.reuse == "residual"
    if name in SEARCH_UNSUPPORTED:
        assert c.search.startswith("no: ")
    else:
        assert c.search == "exact"
    stale = "the coverage table of docs/pipelines.md is stale: run `python -m tests.fixtures.coverage`"
    assert coverage.row(c) in readme_rows, stale


def test_readme_table_lists_every_family_once(readme_rows):
    assert readme_rows[:2] == coverage.HEADER.splitlines()
    assert [r.split(" | ")[0].removeprefix("| ") for r in readme_rows[2:]] == list(coverage.FAMILIES)
