"""The search-history figure, and the two figure helpers every budcache plot uses."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from matplotlib.figure import Figure

if TYPE_CHECKING:
    from .state import SearchResult


def figure(**kwargs: Any) -> Figure:
    """A figure that needs no pyplot (and switches no backend)."""
    return Figure(**kwargs)


def save(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def plot_history(results: Mapping[str, SearchResult], path: str | Path) -> Path:
    """Loss of each evaluated mask and the best so far, against the evaluation count."""
    fig = figure(figsize=(6.5, 3.6))
    ax = fig.subplots()
    for i, (name, r) in enumerate(results.items()):
        evals = [h[0] for h in r.history]
        ax.scatter(evals, [h[1] for h in r.history], s=3, alpha=0.25, color=f"C{i}")
        ax.plot(evals, [h[2] for h in r.history], color=f"C{i}", lw=1.5, label=f"{name} (best {r.loss:.3g})")
    ax.set_yscale("log")
    ax.set_xlabel("evaluations (distinct masks)")
    ax.set_ylabel("loss vs teacher")
    ax.legend(fontsize=8, frameon=False)
    return save(fig, path)
