"""budcache: budget-constrained step-level caching for diffusion transformers."""

from .apply import CacheHandle, apply
from .plan import CachePlan, PlanError, SearchRecord, uniform_mask
from .residual import stack_hooks
from .sampler import OutputDenoiser, ResidualDenoiser, euler, linear_sigmas, sample

__all__ = [
    "apply", "CacheHandle", "CachePlan", "PlanError", "SearchRecord", "uniform_mask", "stack_hooks",
    "OutputDenoiser", "ResidualDenoiser", "euler", "linear_sigmas", "sample",
]
__version__ = "0.1.0"
