"""``PretrainModule``: next-token pre-training of :class:`~heartgpt.model.GPT` with Lightning.

The network is built here from plain hyper-parameters (``model_config`` holds the
:class:`GPTConfig` fields), kept as ``self.model`` (state-dict keys ``model.*``), and every
hyper-parameter is saved as a plain Python value, so a ``.ckpt`` loads with
``torch.load(..., weights_only=True)`` and ``PretrainModule.load_from_checkpoint(path)`` needs
no Hydra.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torchmetrics import MeanMetric, SumMetric
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.text import Perplexity

from heartgpt.data.tokenizer import get_modality
from heartgpt.model import GPT, GPTConfig
from heartgpt.training.base import GPTLightningModule, plain

STAGES = ("train", "val", "test")


class PretrainModule(GPTLightningModule):
    """Next-token cross-entropy pre-training with AdamW and a warm-up + cosine schedule.

    Args:
        model_config: :class:`GPTConfig` fields (``conf/model/*.yaml`` plus the vocab size).
        modality: 'ecg' | 'ppg'; must agree with ``model_config['vocab_size']``.
        lr: peak learning rate.
        betas: AdamW betas.
        weight_decay: AdamW weight decay of the parameters ``decay_params`` names.
        decay_params: 'linear' (``nn.Linear`` weights only) or 'all' (every parameter, as
            released; see :mod:`heartgpt.training.optim`).
        warmup_steps: linear warm-up steps.
        lr_decay_steps: steps of the cosine decay (counted from 0); None: the trainer's total.
        min_lr_ratio: final learning rate as a fraction of ``lr`` (1.0: constant after warm-up).
        seed: base of the per-batch dropout seeds (:func:`heartgpt.training.base.step_seed`).
        compile: ``torch.compile`` the network (``nn.Module.compile``: state-dict keys unchanged).
        init_from: weights to start from: a released HeartGPT ``.zip``/``.pth``, one of our
            ``.ckpt`` files or a ``.safetensors`` export. Loaded when fitting starts; a resumed
            run (``ckpt_path``) then overwrites them with the checkpoint's.
    """

    def __init__(
        self,
        model_config: Mapping[str, Any],
        modality: str,
        lr: float,
        betas: Sequence[float],
        weight_decay: float,
        warmup_steps: int,
        lr_decay_steps: int | None,
        min_lr_ratio: float,
        seed: int,
        compile: bool = False,
        init_from: str | None = None,
        decay_params: str = "linear",
    ) -> None:
        super().__init__()
        # Normalise before save_hyperparameters, which records these local values.
        model_config = GPTConfig.from_dict(plain(model_config)).to_dict()
        betas = [float(b) for b in plain(betas)]
        modality = get_modality(modality).name
        init_from = str(init_from) if init_from is not None else None
        self.save_hyperparameters()
        self.hparams["task"] = "pretrain"  # read back by heartgpt.model.lightning_checkpoint

        config = GPTConfig.from_dict(model_config)
        if config.out_features is not None:
            raise ValueError("pre-training needs a language-model head (out_features: null)")
        expected = get_modality(modality).vocab_size
        if config.vocab_size != expected:
            raise ValueError(f"{modality} needs vocab_size {expected}, got {config.vocab_size}")
        self.model = GPT(config)

        V = config.vocab_size
        for stage in STAGES:  # self.train_metrics, self.val_metrics, self.test_metrics
            metrics = nn.ModuleDict({
                "loss": MeanMetric(),
                "ppl": Perplexity(),
                "acc": MulticlassAccuracy(V, average="micro", validate_args=False),
            })
            if stage != "train":
                # evaluation sums in float64, over windows each computed in the same batch on
                # any number of devices (heartgpt.data.EvalSampler): 1 and N processes agree
                metrics["loss"].set_dtype(torch.float64)
                metrics["ppl"].set_dtype(torch.float64)
                metrics["windows"] = SumMetric()
            setattr(self, f"{stage}_metrics", metrics)

    def initial_weights(self) -> str | None:
        return self.hparams.init_from

    # ----------------------------------------------------------------------------- steps

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(idx)  # (B, T, V)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch  # (B, T), (B, T)
        logits = self.model(x).float()  # (B, T, V); float: bf16-mixed logits are bf16
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        m = getattr(self, f"{stage}_metrics")
        on_step = stage == "train"
        detached = logits.detach()
        if on_step:  # forward: the batch's value, for per-step logging
            m["ppl"](detached, y)
            m["acc"](detached.flatten(0, 1), y.flatten())
            self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        else:
            m["ppl"].update(detached, y)
            m["acc"].update(detached.flatten(0, 1), y.flatten())
            m["loss"].update(loss.detach(), weight=y.numel())
            self.log(f"{stage}/loss", m["loss"], on_step=False, on_epoch=True, prog_bar=True)
            m["windows"].update(float(x.shape[0]))
            self.log(f"{stage}/windows", m["windows"], on_step=False, on_epoch=True)
        self.log(f"{stage}/ppl", m["ppl"], on_step=on_step, on_epoch=not on_step)
        self.log(f"{stage}/acc", m["acc"], on_step=on_step, on_epoch=not on_step)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "test")
