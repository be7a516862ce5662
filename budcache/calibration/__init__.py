"""Calibration: capture a pipeline's full-compute generations, and replay them as a model source."""

from .capture import Calibration, calibrate
from .prompts import read_prompts
from .replay import PipelineDenoiser, check_replay, denoisers, pipeline_source

__all__ = [
    "Calibration",
    "calibrate",
    "read_prompts",
    "PipelineDenoiser",
    "check_replay",
    "denoisers",
    "pipeline_source",
]
