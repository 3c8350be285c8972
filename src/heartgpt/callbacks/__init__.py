"""Lightning callbacks of heartgpt (configured in ``conf/callbacks/`` and ``conf/freeze/``)."""

from heartgpt.callbacks.attention import AttentionMapLogger
from heartgpt.callbacks.freeze import Freeze, GradualUnfreeze
from heartgpt.callbacks.preemption import Preempted, Preemption
from heartgpt.callbacks.progress import Progress, ProgressLog, StepRichProgressBar, progress_bar
from heartgpt.callbacks.resources import CpuBudget
from heartgpt.callbacks.summary import ModelSummary

__all__ = ["AttentionMapLogger", "CpuBudget", "Freeze", "GradualUnfreeze", "ModelSummary",
           "Preempted", "Preemption", "Progress", "ProgressLog", "StepRichProgressBar", "progress_bar"]
