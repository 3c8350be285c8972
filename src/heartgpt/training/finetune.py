"""``FinetuneModule``: fine-tuning :class:`~heartgpt.model.GPT` with a 1-unit head.

Two kinds of task, as the paper's fine-tunes:

- ``sequence`` (AF screening): one probability per window, from the head at the last position
  (``pooling: last``, the released AF model) or from the mean over positions
  (``pooling: mean``, for labels that do not belong to the last position). Metrics: AUROC,
  average precision, accuracy, F1, sensitivity, specificity.
- ``token`` (beat detection): a probability at every position. Metrics: per-position AUROC
  and beat-level precision, recall and F1 (:mod:`heartgpt.inference.beat_metrics`).

The loss is ``BCEWithLogitsLoss`` on the head's logits; the released sigmoid models load as
they are (their head is the same Linear; the sigmoid is applied at inference). Which layers
train is up to the freeze callbacks (:mod:`heartgpt.training.callbacks.freeze`): the optimiser takes
only the parameters that still require grad. Held-out predictions are written to
``<run dir>/test_predictions.csv`` for cross-validation pooling (:mod:`heartgpt.cv`).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F
from torchmetrics import MeanMetric, MetricCollection, SumMetric
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryAUROC,
    BinaryAveragePrecision,
    BinaryF1Score,
    BinaryRecall,
    BinarySpecificity,
)

from heartgpt.data.tokenizer import get_modality
from heartgpt.files import atomic_path
from heartgpt.inference.beat_metrics import BeatDetectionScores, beat_rows
from heartgpt.model import GPT, GPTConfig
from heartgpt.model.lora import add_lora
from heartgpt.training.base import GPTLightningModule, plain

STAGES = ("train", "val", "test")
PREDICTIONS = "test_predictions.csv"  # in the run dir: every tested window's prediction
HEADS = ("sequence", "token")  # one output per window | one per position
POOLINGS = ("last", "mean")


def _sequence_metrics() -> MetricCollection:
    return MetricCollection({
        "auroc": BinaryAUROC(), "ap": BinaryAveragePrecision(), "acc": BinaryAccuracy(),
        "f1": BinaryF1Score(), "sensitivity": BinaryRecall(), "specificity": BinarySpecificity(),
    })


class FinetuneModule(GPTLightningModule):
    """Binary fine-tuning of a (pre-trained) GPT: sequence labels or per-token targets.

    Args:
        model_config: :class:`GPTConfig` fields; ``out_features`` is forced to 1.
        modality: 'ecg' | 'ppg'; must agree with the vocab size and with ``pretrained``.
        task: a name for the checkpoint ('af', 'beats', ...).
        head: 'sequence' (one output per window, for a label per window) or 'token' (one per
            position, for a target per position).
        pooling: sequence tasks: 'last' position (the paper) or 'mean' over positions.
        pretrained: weights to start from (released ``.zip``/``.pth``, our ``.ckpt`` or
            ``.safetensors``); None trains from scratch. Loaded when fitting starts.
        decay_params: 'linear' | 'all': which parameters ``weight_decay`` applies to.
        lr, betas, weight_decay, warmup_steps, lr_decay_steps, min_lr_ratio: AdamW and its
            warm-up + cosine schedule (:mod:`heartgpt.training.optim`).
        pos_weight: BCE weight of positive examples (beats are sparse); None: 1.
        beat_tolerance_ms: a detected beat matches an annotated one within this (token tasks).
        peak_height, peak_distance_ms, peak_max_width_ms: ``find_peaks`` settings for detected
            beats (``peak_max_width_ms`` None: no width limit).
        seed: base of the per-batch dropout seeds.
        compile: ``torch.compile`` the network.
        lora: ``{rank, alpha, dropout, targets}``: LoRA adapters on those layers of every block
            (:func:`heartgpt.model.lora.add_lora`; config group ``finetune=lora``); they train
            whatever the freeze strategy. None: no adapters.

    Testing writes ``predictions_file`` (every window's probability, or beat count and mean
    probability) into the run directory and, for token heads when ``beats_file`` is set, one row
    per detected and per annotated beat (:func:`heartgpt.inference.beat_metrics.beat_rows`).
    """

    predictions_file: str = PREDICTIONS
    beats_file: str | None = None

    def __init__(
        self,
        model_config: Mapping[str, Any],
        modality: str,
        task: str,
        head: str,
        pooling: str,
        pretrained: str | None,
        lr: float,
        betas: Sequence[float],
        weight_decay: float,
        warmup_steps: int,
        lr_decay_steps: int | None,
        min_lr_ratio: float,
        pos_weight: float | None,
        beat_tolerance_ms: float,
        peak_height: float,
        peak_distance_ms: float,
        peak_max_width_ms: float | None,
        seed: int,
        compile: bool = False,
        decay_params: str = "linear",
        lora: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        model_config = {**GPTConfig.from_dict(plain(model_config)).to_dict(), "out_features": 1}
        betas = [float(b) for b in plain(betas)]
        modality = get_modality(modality).name
        pretrained = str(pretrained) if pretrained is not None else None
        self.save_hyperparameters()

        config = GPTConfig.from_dict(model_config)
        expected = get_modality(modality).vocab_size
        if config.vocab_size != expected:
            raise ValueError(f"{modality} needs vocab_size {expected}, got {config.vocab_size}")
        self.model = GPT(config)
        if lora:  # before any weights load: pretrained ones leave the adapters at zero
            add_lora(self.model, **plain(lora))
        rate = get_modality(modality).sample_rate
        self.register_buffer("pos_weight", torch.tensor(float(pos_weight or 1.0)),
                             persistent=False)

        # One attribute per stage (torchmetrics' convention: a ModuleDict key 'train' would
        # shadow nn.Module.train).
        rate_tol = round(beat_tolerance_ms * rate / 1000)
        distance = max(1, round(peak_distance_ms * rate / 1000))
        max_width = None if peak_max_width_ms is None else round(peak_max_width_ms * rate / 1000)
        for stage in STAGES:
            # evaluation sums in float64, over windows each computed in the same batch on any
            # number of devices (heartgpt.data.EvalSampler): 1 and N processes agree exactly
            loss = MeanMetric() if stage == "train" else MeanMetric().set_dtype(torch.float64)
            setattr(self, f"{stage}_loss", loss)
            if stage != "train":
                setattr(self, f"{stage}_windows", SumMetric())
            if head == "sequence":
                setattr(self, f"{stage}_metrics", _sequence_metrics())
            else:
                # binned AUROC: memory stays bounded over every position of the set
                setattr(self, f"{stage}_metrics", MetricCollection({"auroc": BinaryAUROC(thresholds=200)}))
                if stage != "train":  # peak finding per window: evaluation only
                    setattr(self, f"{stage}_beats", BeatDetectionScores(
                        tolerance=rate_tol, height=peak_height, distance=distance,
                        max_width=max_width))
        self._test_rows: list[dict[str, Any]] = []
        self._test_beats: list[dict[str, Any]] = []

    def initial_weights(self) -> str | None:
        return self.hparams.pretrained

    # ----------------------------------------------------------------------------- steps

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits: (B,) for sequence tasks, (B, T) for token tasks."""
        logits = self.model(tokens)[..., 0].float()  # (B, T)
        if self.hparams.head == "token":
            return logits
        if self.hparams.pooling == "mean":
            return logits.mean(dim=1)  # the head is linear: mean of logits = head(mean hidden)
        return logits[:, -1]  # (B,)

    def _step(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        key = "label" if self.hparams.head == "sequence" else "targets"
        target = batch[key].float()  # (B,) or (B, T)
        logits = self(batch["tokens"])
        loss = F.binary_cross_entropy_with_logits(logits, target, pos_weight=self.pos_weight)
        probs = torch.sigmoid(logits.detach())
        getattr(self, f"{stage}_metrics").update(probs.flatten(), target.flatten().long())
        if stage == "train":
            self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        else:
            stage_loss = getattr(self, f"{stage}_loss")
            stage_loss.update(loss.detach(), weight=target.numel())
            self.log(f"{stage}/loss", stage_loss, on_epoch=True, prog_bar=True)
            windows = getattr(self, f"{stage}_windows")
            windows.update(float(target.shape[0]))
            self.log(f"{stage}/windows", windows, on_epoch=True)
            if self.hparams.head == "token":
                getattr(self, f"{stage}_beats").update(probs, target)
        if stage == "test":
            self._record(batch, probs, target)
        return loss

    def _record(self, batch: dict[str, Any], probs: torch.Tensor, target: torch.Tensor) -> None:
        rows = batch["row"].tolist()
        for i, (row, subject) in enumerate(zip(rows, batch["subject"], strict=True)):
            if self.hparams.head == "sequence":
                self._test_rows.append({"row": row, "subject": subject,
                                        "label": int(target[i].item()),
                                        "prob": float(probs[i].item())})
                continue
            self._test_rows.append({"row": row, "subject": subject,
                                    "positives": int(target[i].sum().item()),
                                    "mean_prob": float(probs[i].mean().item())})
            if self.beats_file:
                scores = self.test_beats
                found = beat_rows(probs[i].float().cpu().numpy(), target[i].cpu().numpy(),
                                  scores.peak_finder, scores.tolerance)
                self._test_beats.extend({"row": row, "subject": subject, **b} for b in found)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._step(batch, "test")

    def _log_epoch(self, stage: str) -> None:
        metrics = getattr(self, f"{stage}_metrics")
        self.log_dict({f"{stage}/{k}": v for k, v in metrics.compute().items()})
        metrics.reset()
        if stage != "train" and self.hparams.head == "token":
            beats = getattr(self, f"{stage}_beats")
            self.log_dict({f"{stage}/beat_{k}": v for k, v in beats.compute().items()})
            beats.reset()

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_start(self) -> None:
        self._test_rows, self._test_beats = [], []

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")
        self._write_rows(self._test_rows, self.predictions_file, ("row",))
        if self.beats_file and self.hparams.head == "token":
            self._write_rows(self._test_beats, self.beats_file, ("row", "position", "kind"))

    def _write_rows(self, rows: list[dict[str, Any]], name: str, order: tuple[str, ...]) -> None:
        """``<run dir>/<name>``: the rows of every rank (each window once, see
        :class:`heartgpt.data.EvalSampler`), sorted by ``order``; written by rank 0."""
        if self.trainer.world_size > 1:
            gathered: list[list[dict]] = [None] * self.trainer.world_size  # type: ignore[list-item]
            torch.distributed.all_gather_object(gathered, rows)
            rows = [r for part in gathered for r in part]
        if not self.trainer.is_global_zero or not rows:
            return
        path = Path(self.trainer.default_root_dir) / name
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(sorted(rows, key=lambda r: tuple(r[k] for k in order)))
