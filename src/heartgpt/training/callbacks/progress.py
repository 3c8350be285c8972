"""Training progress: a Rich bar on a terminal, log lines elsewhere (``callbacks.progress``).

With stdout not a terminal (CI, ``nohup``, SLURM, ``| tee``) a Rich bar shows only its last
frame, so a run looks hung until it ends. :func:`progress_bar` (:class:`Progress`, the ``_target_``
of ``conf/callbacks/default.yaml``'s ``progress`` entry) picks, by ``mode``:

* ``rich``: :class:`StepRichProgressBar`, Lightning's Rich bar;
* ``log``: :class:`ProgressLog`, one ``logging`` line (console and ``train.log``) every
  ``log_every_s`` seconds of training, and one after each validation and test;
* ``auto`` (default): ``rich`` when stdout is a terminal, else ``log``.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar

log = logging.getLogger(__name__)

MODES = ("auto", "rich", "log")


class Progress:
    """``Progress(mode, log_every_s)`` is :func:`progress_bar`'s callback (a class, for the
    ``_target_`` of ``callbacks.progress``; the YAML holds the only defaults)."""

    def __new__(cls, mode: str, log_every_s: float) -> ProgressBar:  # type: ignore[misc]
        return progress_bar(mode, log_every_s)


def progress_bar(mode: str = "auto", log_every_s: float = 30.0) -> ProgressBar:
    """The progress callback for ``mode`` (``auto`` | ``rich`` | ``log``)."""
    if mode not in MODES:
        raise ValueError(f"callbacks.progress.mode={mode!r}: expected one of {', '.join(MODES)}")
    if mode == "auto":
        mode = "rich" if _stdout_is_a_terminal() else "log"
    return StepRichProgressBar() if mode == "rich" else ProgressLog(log_every_s=log_every_s)


def _stdout_is_a_terminal() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):  # replaced or closed stdout
        return False


class StepRichProgressBar(RichProgressBar):
    """Lightning's Rich bar, reading ``Epoch 3`` rather than ``Epoch 3/-2`` in step-based runs
    (``max_steps`` set, no ``max_epochs``)."""

    def _get_train_description(self, current_epoch: int) -> str:
        max_epochs = self.trainer.max_epochs
        if max_epochs is not None and max_epochs > 0:
            return super()._get_train_description(current_epoch)
        description = f"Epoch {current_epoch}"
        return f"{description:{len(self.validation_description)}}"


def format_duration(seconds: float) -> str:
    """``0:01:05``; ``?`` when unknown."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    return str(timedelta(seconds=round(seconds)))


def _format_value(value: Any) -> str:
    if hasattr(value, "item"):
        value = value.item()
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class ProgressLog(ProgressBar):
    """Progress as log lines: ``step 40/150 (27%) | train/loss 4.30 | 1.25 it/s | elapsed
    0:00:32 | ETA 0:01:28``, at most one every ``log_every_s`` seconds of training (0: every
    step), plus one after each validation and test. Rank 0 only.

    Being a :class:`~lightning.pytorch.callbacks.ProgressBar`, it also stops Lightning from
    adding its default tqdm bar. ``clock`` is for tests.
    """

    def __init__(self, log_every_s: float = 30.0, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        if log_every_s < 0:
            raise ValueError(f"log_every_s={log_every_s}: must be >= 0")
        self.log_every_s = float(log_every_s)
        self._clock = clock
        self._enabled = True
        self._start: float | None = None  # clock at the first training batch
        self._start_step = 0
        self._last: float | None = None  # clock at the last progress line

    # ProgressBar API
    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    # interval logic (unit-tested with a fake clock)
    def due(self, now: float) -> bool:
        """Whether a progress line is due at ``now``: ``log_every_s`` after the previous one (the
        first, ``log_every_s`` after training started)."""
        if self._start is None:
            self._start = self._last = now
        assert self._last is not None
        return now - self._last >= self.log_every_s

    def rate(self, step: int, now: float) -> float:
        """Optimizer steps per second since training (or resuming) started."""
        if self._start is None or now <= self._start:
            return math.nan
        return (step - self._start_step) / (now - self._start)

    def line(self, trainer: L.Trainer, now: float) -> str:
        step = trainer.global_step
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        if total is None:
            estimated = trainer.estimated_stepping_batches
            total = int(estimated) if math.isfinite(estimated) else None
        rate = self.rate(step, now)
        parts = [f"step {step}/{total} ({100 * step / total:.0f}%)" if total else f"step {step}"]
        metrics = {k: v for k, v in trainer.progress_bar_metrics.items() if k.startswith("train")}
        if metrics:
            parts.append(" ".join(f"{k} {_format_value(v)}" for k, v in metrics.items()))
        parts.append(f"{rate:.3g} it/s" if math.isfinite(rate) else "? it/s")
        assert self._start is not None
        parts.append(f"elapsed {format_duration(now - self._start)}")
        if total and math.isfinite(rate) and rate > 0:
            parts.append(f"ETA {format_duration((total - step) / rate)}")
        return " | ".join(parts)

    # hooks
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = self._last = self._clock()
        self._start_step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if not (self._enabled and trainer.is_global_zero):
            return
        now = self._clock()
        if self.due(now):
            self._last = now
            log.info(self.line(trainer, now))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not (self._enabled and trainer.is_global_zero):
            return
        log.info("validation at step %d: %s", trainer.global_step, _stage_metrics(trainer, "val"))

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not (self._enabled and trainer.is_global_zero):
            return
        log.info("test: %s", _stage_metrics(trainer, "test"))


def _stage_metrics(trainer: L.Trainer, prefix: str) -> str:
    """``val/loss 2.3 val/acc 0.31``: the logged metrics of one stage, or ``done``."""
    shown = " ".join(f"{k} {_format_value(v)}" for k, v in trainer.callback_metrics.items()
                     if k.startswith(prefix))
    return shown or "done"
