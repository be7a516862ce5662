"""budcache: budget-constrained step-level caching for diffusion transformers."""

from .apply import CacheHandle, apply, summary
from .capture import Calibration, calibrate
from .plan import CachePlan, PlanError, SearchRecord, uniform_mask
from .residual import stack_hooks
from .replay import search
from .sampler import OutputDenoiser, ResidualDenoiser, euler, linear_sigmas, sample

__all__ = [
    "calibrate", "Calibration", "search", "apply", "summary", "CacheHandle", "CachePlan", "PlanError", "SearchRecord", "uniform_mask", "stack_hooks",
    "OutputDenoiser", "ResidualDenoiser", "euler", "linear_sigmas", "sample",
]
__version__ = "0.1.0"
