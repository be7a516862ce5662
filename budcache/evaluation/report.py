"""One report for every comparison: rows of methods scored against full compute, a table, files.

:class:`Report` scores outputs on the held-out set of a model source (MSE on latents; PSNR, SSIM,
LPIPS when installed, on images, or PSNR on latents over the reference's range; the source's own
extra scores such as digit accuracy); :func:`write` writes ``table.txt``, ``results.csv``,
``results.json``, ``quality_vs_nfe.png`` and ``samples_B<b>.png``.
"""

from __future__ import annotations

import csv
import importlib.util
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..source import Source
from . import metrics, plots


@dataclass
class Row:
    """One method at one budget: its quality against full compute and its NFE per sample."""

    budget: int
    method: str
    rule: str
    nfe_mean: float
    nfe_sd: float
    nfe_min: int
    nfe_max: int
    mse: float
    psnr: float
    ssim: float | None
    lpips: float | None = None
    speedup: float | None = None
    accuracy: float | None = None
    mask: str = ""
    note: str = ""
    extra: dict = field(default_factory=dict)


def _nfe(values: Sequence[int] | torch.Tensor) -> dict:
    t = torch.as_tensor(values, dtype=torch.float64)
    return dict(
        nfe_mean=float(t.mean()), nfe_sd=float(t.std(unbiased=False)), nfe_min=int(t.min()), nfe_max=int(t.max())
    )


def lpips_available() -> bool:
    """Whether the optional ``lpips`` extra is installed (it also needs its weights locally)."""
    return importlib.util.find_spec("lpips") is not None


def _scores(x: torch.Tensor, full: torch.Tensor, source: Source, lpips: bool) -> dict:
    """MSE on latents; PSNR / SSIM (and LPIPS) on images (demo), or PSNR on latents over the
    reference's range."""
    if source.images is None:
        span = float(full.max() - full.min())
        return {"psnr": metrics.psnr(x.flatten(1), full.flatten(1), data_range=span), "ssim": None}
    img, ref = source.images(x), source.images(full)
    scores = metrics.report(img, ref)
    return {"psnr": scores["psnr"], "ssim": scores["ssim"], "lpips": metrics.lpips(img, ref) if lpips else None}


class Report:
    """Rows scored against ``full`` (the full-compute outputs of the source's held-out set, which
    took ``t_full`` seconds), and the outputs by ``"B=<b> <method> [rule]"`` (plus ``"full"``)."""

    def __init__(self, source: Source, full: torch.Tensor, t_full: float):
        self.source, self.full, self.t_full = source, full, t_full
        self.rows: list[Row] = []
        self.lpips = source.images is not None and lpips_available()
        if source.images is not None and not self.lpips:
            print("LPIPS skipped: it needs the optional extra (pip install 'budcache[lpips]') and its weights")
        self.show = source.images or (lambda x: x)
        self.images = {"full": self.show(full)}

    def add(
        self, budget: int, method: str, rule: str, x: torch.Tensor, nfe, seconds: float | None = None, **info
    ) -> None:
        """Score ``x`` (NFE per sample ``nfe``; ``seconds``: its wall time, for the speedup)."""
        source, full = self.source, self.full
        extra = source.score(source.images(x)) if source.score else {}
        self.rows.append(
            Row(
                budget,
                method,
                rule,
                **_nfe(nfe),
                mse=metrics.mse(x, full),
                **_scores(x, full, source, self.lpips),
                speedup=None if seconds is None else self.t_full / seconds,
                accuracy=extra.get("accuracy"),
                **info,
            )
        )
        self.images[f"B={budget} {method}" + ("" if rule == "-" else f" [{rule}]")] = self.show(x)


def table(rows: Sequence[Row]) -> str:
    """One block per budget, best PSNR first."""
    head = (
        f"{'B':>3} {'method':<34} {'rule':<12} {'NFE mean±sd [min,max]':<24} {'speedup':>8} {'MSE':>10} "
        f"{'PSNR':>7} {'SSIM':>7} {'acc':>6}  note"
    )
    lines = []
    for b in sorted({r.budget for r in rows}):
        lines += [head, "-" * len(head)]
        for r in sorted((r for r in rows if r.budget == b), key=lambda r: -r.psnr):
            nfe = f"{r.nfe_mean:.2f}±{r.nfe_sd:.2f} [{r.nfe_min},{r.nfe_max}]"
            speed = f"{r.speedup:7.2f}x" if r.speedup is not None else f"{'':>8}"
            acc = f"{r.accuracy:6.3f}" if r.accuracy is not None else f"{'':>6}"
            ssim = f"{r.ssim:7.4f}" if r.ssim is not None else f"{'':>7}"
            lines.append(
                f"{b:>3} {r.method:<34} {r.rule:<12} {nfe:<24} {speed} {r.mse:10.3e} {r.psnr:7.2f} "
                f"{ssim} {acc}  {r.note}"
            )
        lines.append("")
    return "\n".join(lines)


def write(rows: Sequence[Row], images: dict[str, torch.Tensor], out: Path, samples: int = 8) -> None:
    """``table.txt``, ``results.csv``, ``results.json``, ``quality_vs_nfe.png`` and ``samples_B<b>.png``."""
    out.mkdir(parents=True, exist_ok=True)
    text = table(rows)
    (out / "table.txt").write_text(text + "\n")
    records = [asdict(r) for r in rows]
    (out / "results.json").write_text(json.dumps(records, indent=1))
    with (out / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[k for k in records[0] if k != "extra"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)
    plots.plot_quality_vs_nfe(rows, out / "quality_vs_nfe.png")
    for b in (
        sorted({r.budget for r in rows}) if images["full"].dim() == 4 and images["full"].shape[1] in (1, 3) else ()
    ):
        grid = [("full", images["full"][:samples])]
        grid += [
            (name.removeprefix(f"B={b} "), img[:samples]) for name, img in images.items() if name.startswith(f"B={b} ")
        ]
        plots.image_grid(grid, out / f"samples_B{b}.png")
    print(text)
