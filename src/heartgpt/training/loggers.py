"""Experiment loggers of heartgpt (``conf/logger/``)."""

from __future__ import annotations

import logging
from typing import Any

from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.utilities import rank_zero_only

log = logging.getLogger(__name__)


class WandbLogger(_LightningWandbLogger):
    """Lightning's WandbLogger, minus its noise: it no longer passes ``anonymous=None`` to
    ``wandb.init`` (wandb >= 0.19 warns on every run that the setting has no effect), and an
    offline run ends with one line saying how to upload it (with ``settings.quiet``, wandb's own
    30-line history and summary footer is not printed).

    ``log_model``: the best and last checkpoints as model artifacts at the end of the run, with
    their metrics and sha256 (:mod:`heartgpt.training.wandb_artifacts`; Lightning's own scanning
    of every checkpoint stays off); ``log_tables``: the test/eval predictions and confusion
    matrices as W&B tables and plots."""

    def __init__(self, *args: Any, log_model: bool, log_tables: bool, **kwargs: Any) -> None:
        # no defaults: conf/logger/wandb.yaml holds them (one source of the settings)
        super().__init__(*args, log_model=False, **kwargs)
        if log_model not in (True, False):
            raise ValueError(f"logger.wandb.log_model: true or false, got {log_model!r}")
        self.log_checkpoints, self.log_tables = bool(log_model), bool(log_tables)
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)
        self._sync_hint_logged = False

    @rank_zero_only
    def finalize(self, status: str) -> None:
        super().finalize(status)
        if self._offline and self._experiment is not None and not self._sync_hint_logged:
            sync_dir = getattr(getattr(self._experiment, "settings", None), "sync_dir", None)
            if sync_dir:
                self._sync_hint_logged = True
                log.info("W&B run saved offline: upload it with `wandb sync %s`", sync_dir)
