"""What stage 2 learns: a plan's sigmas as a strictly decreasing schedule with pinned points, and the decoupled
noise levels the model is told at each step."""

from __future__ import annotations

from collections.abc import Collection, Sequence

import torch

from ..errors import PlanError


class SigmaSchedule(torch.nn.Module):
    """Strictly decreasing sigmas with fixed endpoints: softmax increments, cumulative sum.

    ``pinned``: indices of sigmas that keep their value too (the endpoints always do); the sigmas
    between two pinned ones move within that segment only. Pinning both sides of an expert switch
    keeps every step with the expert the pipeline gives it (Wan2.2's boundary)."""

    def __init__(self, sigmas: Sequence[float], pinned: Collection[int] = ()):
        super().__init__()
        s = torch.as_tensor(sigmas, dtype=torch.float64)
        if s.dim() != 1 or len(s) < 2 or not bool((s[:-1] > s[1:]).all()):
            raise PlanError("a schedule to align must be strictly decreasing with at least 2 values")
        knots = sorted({0, len(s) - 1, *(int(i) for i in pinned if 0 <= int(i) < len(s))})
        self.segments = list(zip(knots[:-1], knots[1:]))
        self.register_buffer("knots", s[knots].clone())
        self.register_buffer("high", s[0].clone())
        self.register_buffer("low", s[-1].clone())
        logits = torch.empty(len(s) - 1, dtype=torch.float64)
        for a, b in self.segments:
            logits[a:b] = ((s[a:b] - s[a + 1 : b + 1]) / (s[a] - s[b])).log()
        self.logits = torch.nn.Parameter(logits)

    def forward(self) -> torch.Tensor:
        parts = [self.knots[:1]]
        for i, (a, b) in enumerate(self.segments):
            hi, lo = self.knots[i], self.knots[i + 1]
            steps = torch.softmax(self.logits[a:b], 0).cumsum(0)
            parts += [hi - (hi - lo) * steps[:-1], lo[None]]
        return torch.cat(parts)


class ModelTimes(torch.nn.Module):
    """The noise level the model is told at each of K steps, as an offset ``d[k]`` from the step's own
    sigma in logit space (zero: the step's sigma exactly), so it stays within (0, 1)."""

    def __init__(self, num_steps: int):
        super().__init__()
        self.offsets = torch.nn.Parameter(torch.zeros(num_steps, dtype=torch.float64))

    def forward(self, sigmas: torch.Tensor) -> torch.Tensor:
        s = sigmas[:-1]
        logit = torch.logit(s.clamp(1e-4, 1 - 1e-4))
        return s + (torch.sigmoid(logit + self.offsets) - torch.sigmoid(logit))


def boundary_pins(restarts: Collection[int]) -> list[int]:
    """The sigmas to pin so no step crosses a restart (an expert switch): both sides of each."""
    return sorted({i for k in restarts for i in (k - 1, k)})
