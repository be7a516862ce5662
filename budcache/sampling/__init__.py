"""Sampling: reuse rules, denoisers, the one cached Euler loop and the plain solvers it is compared with."""

from .denoisers import Batch, Checkpointed, Denoiser, OutputDenoiser, ResidualDenoiser, VelocityFn
from .loop import State, StepInfo, advance, euler, linear_sigmas, sample
from .rules import RULES, check_rules, decode, encode, history_depth, predict, remember

__all__ = [
    "Batch",
    "Checkpointed",
    "Denoiser",
    "OutputDenoiser",
    "ResidualDenoiser",
    "VelocityFn",
    "State",
    "StepInfo",
    "advance",
    "euler",
    "linear_sigmas",
    "sample",
    "RULES",
    "check_rules",
    "decode",
    "encode",
    "history_depth",
    "predict",
    "remember",
]
