"""Lightning callbacks of heartgpt (configured in ``conf/callbacks/`` and ``conf/freeze/``)."""

from heartgpt.callbacks.attention import AttentionMapLogger
from heartgpt.callbacks.freeze import Freeze, GradualUnfreeze

__all__ = ["AttentionMapLogger", "Freeze", "GradualUnfreeze"]
