"""Figures: a plan's mask over its sigma schedule, image grids, quality against NFE, alignment, frontier.

Figures are drawn on ``matplotlib.figure.Figure`` directly: no pyplot, no backend switched.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from matplotlib.ticker import MaxNLocator

from ..plan import CachePlan
from ..search.history import figure, plot_history, save

__all__ = ["plot_plan", "plot_history", "image_grid", "plot_quality_vs_nfe", "plot_alignment", "plot_frontier"]


def plot_plan(plan: CachePlan, path: str | Path) -> Path:
    """The sigma schedule with computed steps as filled markers and reused ones hollow."""
    k = plan.num_steps
    sigmas = plan.sigmas if plan.sigmas is not None else torch.linspace(1, 0, k + 1).tolist()
    fig = figure(figsize=(max(6, k * 0.28), 3.2))
    ax = fig.subplots()
    ax.plot(range(k + 1), sigmas, color="0.7", lw=1, zorder=1)
    on = [i for i in range(k) if plan.mask[i]]
    off = [i for i in range(k) if not plan.mask[i]]
    ax.scatter(on, [sigmas[i] for i in on], color="C3", s=36, zorder=2, label=f"compute ({len(on)})")
    ax.scatter(
        off, [sigmas[i] for i in off], facecolor="white", edgecolor="C0", s=30, zorder=2, label=f"reuse ({len(off)})"
    )
    ax.set_xlabel("step")
    ax.set_ylabel("sigma")
    ax.set_title(f"B={plan.budget}/K={k}  {plan.reuse} reuse  {plan.strip}", fontsize=9, family="monospace")
    ax.legend(fontsize=8, frameon=False)
    if plan.sigmas is None:
        ax.text(
            0.99,
            0.95,
            "pipeline default schedule (shown linear)",
            transform=ax.transAxes,
            ha="right",
            va="top",
            fontsize=7,
            color="0.4",
        )
    return save(fig, path)


def image_grid(rows: Sequence[tuple[str, torch.Tensor]], path: str | Path, columns: int = 10) -> Path:
    """One row of images (N, 1, H, W) in [-1, 1] per labelled method (at most ``columns`` each)."""
    columns = min(columns, *(len(images) for _, images in rows))
    fig = figure(figsize=(columns * 0.8, len(rows) * 0.9))
    axes = fig.subplots(len(rows), columns, squeeze=False)
    for r, (name, images) in enumerate(rows):
        for c in range(columns):
            ax = axes[r][c]
            ax.imshow(images[c, 0].clamp(-1, 1).numpy(), cmap="gray", vmin=-1, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=7)
    fig.subplots_adjust(wspace=0.05, hspace=0.05)
    return save(fig, path)


def series(method: str, budget: int) -> str:
    """A method's name across budgets: ``plain 10-step AB2`` -> ``plain AB2``, ``UniPC (flow) 10`` ->
    ``UniPC (flow)``."""
    if method.startswith(f"plain {budget}-step "):
        return "plain " + method.removeprefix(f"plain {budget}-step ")
    return method.removesuffix(f" {budget}")


def plot_quality_vs_nfe(rows: Sequence, path: str | Path) -> Path:
    """PSNR against mean NFE, one line per method and reuse rule (``rows``: compare.Row)."""
    fig = figure(figsize=(7.5, 4.5))
    ax = fig.subplots()
    lines: dict[str, list] = {}
    for r in rows:
        lines.setdefault(series(r.method, r.budget) + ("" if r.rule == "-" else f" [{r.rule}]"), []).append(
            (r.nfe_mean, r.psnr)
        )
    for i, (name, points) in enumerate(sorted(lines.items())):
        points.sort()
        style = "-" if "[extrapolate" in name else ("--" if "[repeat" in name else ":")
        ax.plot(
            *zip(*points),
            style,
            marker="o",
            ms=3,
            lw=2.2 if name.startswith("budcache") else 1.1,
            color=f"C{i % 10}",
            label=name,
        )
    ax.set_xlabel("NFE (mean per sample)")
    ax.set_ylabel("PSNR vs full compute (dB)")
    ax.legend(fontsize=6.5, frameon=False, ncol=2)
    return save(fig, path)


def plot_alignment(plan: CachePlan, result, path: str | Path) -> Path:
    """The schedule before and after alignment over the mask (crosses: the noise levels the model is told,
    where decoupled), and the training / validation loss."""
    fig = figure(figsize=(11, 3.6))
    ax, bx = fig.subplots(1, 2)
    k = plan.num_steps
    for sigmas, name, color in ((result.initial, "before", "0.6"), (result.sigmas, "after", "C3")):
        ax.plot(range(k + 1), sigmas, color=color, lw=1.2, label=name)
        ax.scatter(
            [i for i in range(k) if plan.mask[i]],
            [sigmas[i] for i in range(k) if plan.mask[i]],
            color=color,
            s=22,
            zorder=3,
        )
        ax.scatter(
            [i for i in range(k) if not plan.mask[i]],
            [sigmas[i] for i in range(k) if not plan.mask[i]],
            facecolor="white",
            edgecolor=color,
            s=18,
            zorder=3,
        )
    if plan.model_sigmas is not None:
        ax.scatter(range(k), plan.model_sigmas, marker="x", color="C0", s=20, zorder=4, label="model told")
    ax.set_xlabel("step (filled: computed)")
    ax.set_ylabel("sigma")
    ax.set_title(f"B={plan.budget}/K={k}  {plan.strip}", fontsize=8, family="monospace")
    ax.legend(fontsize=8, frameon=False)
    epochs = range(1, len(result.train_loss) + 1)
    bx.plot(epochs, result.train_loss, label="training")
    bx.plot(range(len(result.validation_loss)), result.validation_loss, label="validation")
    if result.best_epoch:
        bx.axvline(result.best_epoch, color="0.6", ls=":", lw=1, label=f"kept (epoch {result.best_epoch})")
    bx.set_xlabel("epoch")
    bx.set_ylabel("MSE vs teacher")
    bx.set_yscale("log")
    bx.legend(fontsize=8, frameon=False)
    return save(fig, path)


def plot_frontier(rows: Sequence[dict], path: str | Path) -> Path:
    """Held-out PSNR against the budget for budcache's plans, the uniform mask and every plain fewer-step
    solver (the row keys that start with ``plain``)."""
    fig = figure(figsize=(6.5, 4))
    ax = fig.subplots()
    budgets = [r["budget"] for r in rows]
    plain = [(k, ":^") for k in rows[0] if k.startswith("plain ")]
    for name, style in (("budcache", "-o"), ("uniform mask", "--s"), *plain):
        ax.plot(budgets, [r[name] for r in rows], style, ms=4, label=name)
    ax.set_xlabel("budget B (block-stack executions)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if "rule" in rows[0]:
        ax.set_title(f"held-out quality, reuse rule {rows[0]['rule']}", fontsize=9)
    ax.set_ylabel("PSNR vs full compute (dB)")
    ax.legend(fontsize=8, frameon=False)
    return save(fig, path)
