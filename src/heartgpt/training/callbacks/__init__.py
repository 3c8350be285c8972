"""Lightning callbacks of heartgpt (configured in ``conf/callbacks/`` and ``conf/freeze/``)."""

from heartgpt.training.callbacks.attention_maps import AttentionMapLogger
from heartgpt.training.callbacks.calibration import CalibrateOnFitEnd
from heartgpt.training.callbacks.freeze import Freeze, GradualUnfreeze
from heartgpt.training.callbacks.preemption import Preempted, Preemption
from heartgpt.training.callbacks.progress import (
           Progress,
           ProgressLog,
           StepRichProgressBar,
           progress_bar,
)
from heartgpt.training.callbacks.resources import CpuBudget
from heartgpt.training.callbacks.summary import ModelSummary

__all__ = ["AttentionMapLogger", "CalibrateOnFitEnd", "CpuBudget", "Freeze", "GradualUnfreeze", "ModelSummary",
           "Preempted", "Preemption", "Progress", "ProgressLog", "StepRichProgressBar", "progress_bar"]
