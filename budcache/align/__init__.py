"""Stage 2, alignment: learn the sigma schedule of a fixed plan by teacher-student distillation.

``budcache.align(plan, calib)`` aligns a plan on a calibrated pipeline (this module is callable: it is
:func:`~budcache.align.fit.align`); :mod:`.schedule` holds what is learned (the schedule and the decoupled model
times), :mod:`.fit` the distillation, :mod:`.checkpoint` resumable runs.
"""

from .._stage import callable_module
from .checkpoint import unfinished
from .fit import AlignConfig, AlignResult, align, student, student_solver
from .schedule import ModelTimes, SigmaSchedule, boundary_pins

__all__ = [
    "AlignConfig",
    "AlignResult",
    "ModelTimes",
    "SigmaSchedule",
    "align",
    "boundary_pins",
    "student",
    "student_solver",
    "unfinished",
]

callable_module(__name__, align)
