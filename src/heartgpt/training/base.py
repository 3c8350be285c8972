"""What the pre-training and fine-tuning LightningModules share: the network in ``self.model``,
weights loaded when any stage starts, per-batch dropout seeds, AdamW with a warm-up + cosine
schedule, and hyper-parameters kept as plain Python values (a ``.ckpt`` loads with
``torch.load(..., weights_only=True)`` and ``load_from_checkpoint`` needs no Hydra)."""

from __future__ import annotations

import logging
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from heartgpt.files import sha256_file
from heartgpt.model.checkpoint_format import CheckpointError
from heartgpt.model.checkpoints import init_from_pretrained, load_model
from heartgpt.model.lightning_checkpoint import (
    BASE_KEY,
    base_reference,
    fill_from_base,
    read_base,
    strip_base,
)
from heartgpt.training.optim import build_optimizer, build_scheduler

log = logging.getLogger(__name__)


def plain(value: Any) -> Any:
    """OmegaConf containers -> Python containers (hparams must unpickle with weights_only)."""
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def step_seed(seed: int, rank: int, step: int, batch_idx: int) -> int:
    """The torch seed of one training batch: a pure function of where training is.

    Re-seeding every batch makes dropout masks independent of anything else that drew random
    numbers before (data-loader workers, sanity checks, a resume), so a resumed run repeats the
    loss curve of an uninterrupted one; every DDP rank gets different masks.
    """
    return int(np.random.SeedSequence([seed, rank, step, batch_idx]).generate_state(1)[0])


# The file load_from_checkpoint is reading, for the errors of on_load_checkpoint.
_LOADING: ContextVar[str | None] = ContextVar("heartgpt_loading_checkpoint", default=None)


class GPTLightningModule(L.LightningModule):
    """Base of :class:`~heartgpt.training.pretrain.PretrainModule` and
    :class:`~heartgpt.training.finetune.FinetuneModule`.

    Subclasses build ``self.model`` (a :class:`~heartgpt.model.GPT`) and save hyper-parameters
    ``modality``, ``seed``, ``compile``, ``lr``, ``betas``, ``weight_decay``, ``warmup_steps``,
    ``lr_decay_steps``, ``min_lr_ratio``; :meth:`initial_weights` names the file to start from.
    """

    model: torch.nn.Module
    _prepared = False
    _step_loss: torch.Tensor | None = None  # sum of this optimiser step's micro-batch losses
    _step_batches = 0

    def initial_weights(self) -> str | None:
        """Weights copied into ``self.model`` when fitting starts (None: keep the init)."""
        return None

    def setup(self, stage: str) -> None:
        if self._prepared:
            return
        self._prepared = True
        path = self.initial_weights()
        # In every stage, so that a test-only run scores the named weights, not the random init;
        # a checkpoint given to fit/test (ckpt_path) is restored after this and wins.
        if path:
            loaded = init_from_pretrained(self.model, path, modality=self.hparams.modality,
                                          task=self.hparams.get("task", "pretrain"))
            # saved with every checkpoint: which file, byte for byte, this model started from
            self.hparams["initial_weights"] = {"path": str(Path(loaded.source).resolve()),
                                               "sha256": sha256_file(loaded.source)}
        if self.hparams.compile:
            self.model.compile()  # nn.Module.compile: state-dict keys unchanged

    # ------------------------------------------------------------------ LoRA checkpoints

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A LoRA run started from a file keeps only what it trains: the frozen tensors that
        are exactly the base's are left out and ``checkpoint["base_weights"]`` names the file
        (:mod:`heartgpt.model.lightning_checkpoint`). Any other run: the full state dict."""
        reference = base_reference(self.hparams)
        if reference is None:
            return
        cache = getattr(self, "_base_weights_cache", None)
        if cache is None or cache[0] != reference:
            try:
                cache = (reference, read_base(reference, load_model))
            except CheckpointError as e:  # the base changed under a running job: keep it all
                log.warning("saving the full state dict: %s", e)
                return
            self._base_weights_cache = cache
        strip_base(checkpoint, self, reference, cache[1])

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Put the tensors a LoRA checkpoint left to its base back, from the base file (which
        must exist with the recorded sha256), before Lightning loads the state dict strictly;
        later saves of this module reference the same file."""
        reference = checkpoint.get(BASE_KEY)
        if not reference:
            return
        trainer = self._trainer
        source = _LOADING.get() or (trainer.ckpt_path if trainer is not None else None)
        fill_from_base(checkpoint, load_model, self.state_dict().keys(), source)
        self.hparams["initial_weights"] = {"path": str(reference["path"]),
                                           "sha256": str(reference["sha256"])}

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any) -> Any:
        """Lightning's, with ``checkpoint_path`` named by the errors of a LoRA checkpoint
        whose base file is missing or changed."""
        token = _LOADING.set(str(checkpoint_path))
        try:
            return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)
        finally:
            _LOADING.reset(token)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = self._step(batch, "train")
        detached = loss.detach().float()
        self._step_loss = detached if self._step_loss is None else self._step_loss + detached
        self._step_batches += 1
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Log ``train/global_loss``: the loss of the whole global batch of this optimiser step
        (its micro batches on every process), the same number on 1 device or N."""
        if self._step_batches:
            self.log("train/global_loss", self._step_loss / self._step_batches, on_step=True,
                     on_epoch=False, sync_dist=True)
        self._step_loss, self._step_batches = None, 0

    def _step(self, batch: Any, stage: str) -> torch.Tensor:
        raise NotImplementedError

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        torch.manual_seed(step_seed(self.hparams.seed, self.global_rank, self.global_step, batch_idx))

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW over the parameters that require grad (frozen ones get no state), stepped
        warm-up + cosine; ``lr_decay_steps`` null or <= 0: the trainer's total steps."""
        hp = self.hparams
        # every parameter of the module: the network and a task head's own (attention pooling)
        optimizer = build_optimizer(self, hp.lr, hp.betas, hp.weight_decay,
                                    hp.get("decay_params", "linear"))
        decay_steps = hp.lr_decay_steps
        if decay_steps is None or decay_steps <= 0:
            decay_steps = int(self.trainer.estimated_stepping_batches)
        scheduler = build_scheduler(optimizer, hp.warmup_steps, max(decay_steps, hp.warmup_steps),
                                    hp.min_lr_ratio)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "lr"}}
