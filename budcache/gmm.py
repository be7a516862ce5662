"""An analytic flow: the exact rectified-flow velocity of a Gaussian mixture (tests and benchmarks).

Data x0 ~ sum_i pi_i N(mu_i, s_i^2 I), x_t = (1 - t) x0 + t eps. Given component i,
x_t ~ N((1 - t) mu_i, var_i I) with var_i = (1 - t)^2 s_i^2 + t^2, and the velocity
E[eps - x0 | x_t] is exact and cheap, so stage-1 losses are free of training noise.
"""

from __future__ import annotations

import torch


class GaussianMixtureFlow:
    def __init__(self, dim: int = 16, components: int = 6, seed: int = 0, spread: float = 2.0):
        gen = torch.Generator().manual_seed(seed)
        self.means = spread * torch.randn(components, dim, generator=gen, dtype=torch.float64)
        self.stds = 0.05 + 0.3 * torch.rand(components, generator=gen, dtype=torch.float64)
        self.logits = torch.randn(components, generator=gen, dtype=torch.float64)
        self.dim = dim

    @property
    def identity(self) -> str:
        return f"GaussianMixtureFlow(dim={self.dim}, components={len(self.stds)})"

    def __call__(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """Velocity at (x, sigma) for x of shape (N, dim)."""
        t = float(sigma)
        x = x.double()
        var = (1 - t) ** 2 * self.stds**2 + t**2  # (C,)
        centre = (1 - t) * self.means  # (C, D)
        diff = x[:, None, :] - centre[None]  # (N, C, D)
        logp = (
            torch.log_softmax(self.logits, 0)
            - 0.5 * diff.pow(2).sum(-1) / var
            - 0.5 * self.dim * torch.log(var)
        )
        w = torch.softmax(logp, dim=1)  # (N, C)
        eps = t / var[None, :, None] * diff
        x0 = self.means[None] + ((1 - t) * self.stds**2 / var)[None, :, None] * diff
        return (w[..., None] * (eps - x0)).sum(1).float()

    def noise(self, n: int, seed: int) -> torch.Tensor:
        return torch.randn(n, self.dim, generator=torch.Generator().manual_seed(seed))
