"""budcache: budget-constrained step-level caching for diffusion transformers.

The data flow, one stage a name: ``calibrate`` a pipeline -> ``search`` a plan -> ``align`` its
sigmas (optional) -> ``apply`` it at inference (``summary``, ``remove``).
"""

from ._quiet import quiet_imports

with quiet_imports():  # the optional backends diffusers and transformers pull in are quiet
    from . import align, search
    from .calibration import Calibration, calibrate
    from .errors import (
        ArgumentTypeError,
        BudcacheError,
        CacheConflictError,
        CalibrationError,
        CheckpointError,
        PlanError,
        SearchError,
        StateError,
    )
    from .hooks import CacheHandle, apply, remove, stack_hooks, summary
    from .plan import CachePlan, SearchRecord, uniform_mask
    from .planset import PlanSet, load_plans
    from .sampling import OutputDenoiser, ResidualDenoiser, euler, linear_sigmas, sample

__all__ = [
    "calibrate",
    "Calibration",
    "search",
    "align",
    "apply",
    "remove",
    "summary",
    "CacheHandle",
    "CachePlan",
    "PlanSet",
    "load_plans",
    "SearchRecord",
    "uniform_mask",
    "stack_hooks",
    "OutputDenoiser",
    "ResidualDenoiser",
    "euler",
    "linear_sigmas",
    "sample",
    "BudcacheError",
    "ArgumentTypeError",
    "CalibrationError",
    "PlanError",
    "SearchError",
    "CheckpointError",
    "CacheConflictError",
    "StateError",
]
__version__ = "0.1.0"
