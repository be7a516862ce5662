"""Image-quality metrics against a reference: MSE, PSNR, SSIM (LPIPS is an optional extra)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F


def timed(fn: Callable[[], Any], repeats: int = 3) -> tuple[Any, float]:
    """``fn()``'s result and its best wall time in seconds over ``repeats`` runs (for speedups
    measured as ratios in one run)."""
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return out, best


def mse(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x.double() - ref.double()).pow(2).mean())


def psnr(x: torch.Tensor, ref: torch.Tensor, data_range: float = 2.0) -> float:
    """Peak signal-to-noise ratio in dB, per sample then averaged; images in [-1, 1] by default."""
    per = (x.double() - ref.double()).pow(2).flatten(1).mean(1).clamp_min(1e-20)
    return float((10 * torch.log10(data_range**2 / per)).mean())


def _gaussian_window(size: int, sigma: float, channels: int) -> torch.Tensor:
    g = torch.exp(-((torch.arange(size, dtype=torch.float64) - size // 2) ** 2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(x: torch.Tensor, ref: torch.Tensor, data_range: float = 2.0, window: int = 7, sigma: float = 1.5) -> float:
    """Mean structural similarity of (N, C, H, W) images (Gaussian window, valid region)."""
    x, ref = x.double(), ref.double()
    c = x.shape[1]
    w = _gaussian_window(min(window, x.shape[-1], x.shape[-2]), sigma, c)
    conv = lambda t: F.conv2d(t, w, groups=c)  # noqa: E731
    mu_x, mu_y = conv(x), conv(ref)
    var_x = conv(x * x) - mu_x**2
    var_y = conv(ref * ref) - mu_y**2
    cov = conv(x * ref) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(s.mean())


def lpips(x: torch.Tensor, ref: torch.Tensor) -> float:
    """LPIPS (AlexNet); needs the optional ``lpips`` extra and its weights available locally."""
    try:
        import lpips as _lpips
    except ImportError as e:
        raise ImportError("LPIPS needs the optional extra: pip install 'budcache[lpips]'") from e
    net = _lpips.LPIPS(net="alex", verbose=False)
    rgb = lambda t: t.float().expand(-1, 3, -1, -1) if t.shape[1] == 1 else t.float()  # noqa: E731
    with torch.no_grad():
        return float(net(rgb(x), rgb(ref)).mean())


def report(x: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    return {"mse": mse(x, ref), "psnr": psnr(x, ref), "ssim": ssim(x, ref)}
