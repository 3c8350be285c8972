"""Fitting the trust state when a fine-tune ends (``callbacks.calibration``, issue 29).

When fitting ends, :class:`CalibrateOnFitEnd` reads back the checkpoints it names (``best``, and
``last`` with ``files: [best, last]``) with :func:`heartgpt.model.checkpoints.load_model`, so the
numbers are those of the weights in each file, fits a temperature on the validation split's
windows and the OOD reference on (up to ``max_reference_windows``) training windows
(:func:`heartgpt.model.trust.fit_trust`) and stores both into the file, atomically
(:func:`heartgpt.model.trust.store_trust`). Pre-training runs are left as they are.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import lightning as L

from heartgpt.errors import ConfigError
from heartgpt.model.checkpoints import load_model
from heartgpt.model.trust import fit_trust, store_trust

log = logging.getLogger("heartgpt.train")
FILES = ("best", "last")


class CalibrateOnFitEnd(L.Callback):
    """Temperature scaling and the OOD reference, fitted and stored when a fine-tune ends.

    Args:
        enabled: false: nothing is fitted (the checkpoints hold raw logits only).
        temperature: fit the temperature (false: the OOD reference only).
        files: which checkpoints get it: ``best`` and/or ``last``.
        max_windows: validation windows the temperature (and the OOD quantiles) are fitted on.
        max_reference_windows: training windows the OOD reference is fitted on.
        lbfgs_iterations: LBFGS iterations on log T.
        ood_pooling: 'mean' (of every position's hidden state) | 'head' (as the head pools).
        ood_levels: quantile levels of the held-out distances stored.
        ood_threshold_level: the level whose quantile marks a window out of distribution.
        ood_shrinkage: covariance shrinkage in [0, 1]; null: Ledoit-Wolf's estimate.
    """

    def __init__(self, enabled: bool, temperature: bool, files: Sequence[str], max_windows: int,
                 max_reference_windows: int, lbfgs_iterations: int, ood_pooling: str,
                 ood_levels: Sequence[float], ood_threshold_level: float,
                 ood_shrinkage: float | None) -> None:
        unknown = [f for f in files if f not in FILES]
        if unknown:
            raise ConfigError("callbacks.calibration.files", f"must be among {FILES}, got {unknown}")
        self.enabled, self.files = bool(enabled), tuple(files)
        self.settings: dict[str, Any] = {
            "temperature": bool(temperature), "max_windows": int(max_windows),
            "max_reference_windows": int(max_reference_windows),
            "lbfgs_iterations": int(lbfgs_iterations), "ood_pooling": str(ood_pooling),
            "ood_levels": list(ood_levels),
            "ood_threshold_level": float(ood_threshold_level), "ood_shrinkage": ood_shrinkage}

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from heartgpt.training.finetune import FinetuneModule

        if not self.enabled or not isinstance(pl_module, FinetuneModule) or trainer.interrupted:
            return
        callback, datamodule = trainer.checkpoint_callback, trainer.datamodule
        if callback is None or datamodule is None or not trainer.is_global_zero:
            return
        paths = {"best": callback.best_model_path, "last": callback.last_model_path}
        done: set[str] = set()
        for which in self.files:
            path = paths[which]
            if not path or path in done:
                continue
            done.add(path)
            val = datamodule.val_dataloader()
            if not val:
                log.warning("calibration: no validation windows; %s keeps raw logits only", path)
                return
            loaded = load_model(path)
            calibration, reference = fit_trust(
                loaded, val, datamodule.train_dataloader(), self.settings, split="val",
                reference_split="train", shard_dir=str(getattr(datamodule, "shard_dir", "")))
            store_trust(path, calibration, reference)
            told = f"temperature {calibration.temperature:.4f}, " if calibration else ""
            log.info("calibration: %sOOD threshold %.3f stored in %s", told, reference.threshold,
                     path)
