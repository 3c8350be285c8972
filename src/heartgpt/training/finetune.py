"""``FinetuneModule``: fine-tuning :class:`~heartgpt.model.GPT` for any labelled target.

The task is ``module.head`` (:mod:`heartgpt.heads`): ``classify`` (one label per
window, K classes; K=1 is binary, the paper's AF screening), ``regress`` (one or several values
per window, standardised by the training split, predicted in the labels' units) or ``tag``
(a class or value every ``stride`` tokens; beats are binary tagging at stride 1, with beat-level
precision/recall/F1 when ``beats`` is set). The GPT keeps its one linear head (``out_features``
= the head's outputs), so the released AF and beat models load into ``classify`` / ``tag`` as
they are.

Which layers train is up to the freeze callbacks (:mod:`heartgpt.training.callbacks.freeze`):
the optimiser takes only the parameters that still require grad. Held-out predictions are
written to ``<run dir>/test_predictions.csv`` for cross-validation pooling (:mod:`heartgpt.cv`).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torchmetrics import MeanMetric, SumMetric

from heartgpt.data.labels import LabelSchema
from heartgpt.data.shards import ShardError
from heartgpt.data.tokenizer import get_modality
from heartgpt.errors import InputError
from heartgpt.files import atomic_path
from heartgpt.heads.objectives import RegressionObjective
from heartgpt.heads.registry import build_head, misread_by_tools
from heartgpt.inference.beat_metrics import BeatDetectionScores, beat_rows
from heartgpt.model import GPT, GPTConfig
from heartgpt.model.lora import add_lora
from heartgpt.training.base import GPTLightningModule, plain
from heartgpt.training.result_files import TEST_CONFUSION, TEST_PREDICTIONS

STAGES = ("train", "val", "test")


class FinetuneModule(GPTLightningModule):
    """Fine-tuning of a (pre-trained) GPT for the target ``head`` describes.

    Args:
        model_config: :class:`GPTConfig` fields; ``out_features`` is set by the head.
        modality: 'ecg' | 'ppg'; must agree with the vocab size and with ``pretrained``.
        task: a name for the checkpoint ('af', 'beats', 'rhythm', ...).
        head: ``{kind: classify|regress|tag, outputs, pooling, stride, target, loss, ...}``
            (:func:`heartgpt.heads.registry.build_head`).
        pretrained: weights to start from (released ``.zip``/``.pth``, our ``.ckpt`` or
            ``.safetensors``); None trains from scratch. Loaded when any stage starts.
        decay_params: 'linear' | 'all': which parameters ``weight_decay`` applies to.
        lr, betas, weight_decay, warmup_steps, lr_decay_steps, min_lr_ratio: AdamW and its
            warm-up + cosine schedule (:mod:`heartgpt.training.optim`).
        beats: binary tagging at stride 1 only: ``{tolerance_ms, peak_height,
            peak_distance_ms, peak_max_width_ms}``, beat-level metrics of peaks found in the
            per-position probability (``peak_max_width_ms`` None: no width limit); None: none.
        seed: base of the per-batch dropout seeds.
        compile: ``torch.compile`` the network.
        lora: ``{rank, alpha, dropout, targets}``: LoRA adapters on those layers of every block
            (:func:`heartgpt.model.lora.add_lora`; config group ``finetune=lora``); they train
            whatever the freeze strategy. None: no adapters.

    The data must hold what the head predicts: :meth:`setup` checks the DataModule's
    :class:`~heartgpt.data.labels.LabelSchema` and, for value targets, takes the training
    split's mean and std (stored in the checkpoint); fitting stores the schema itself in the
    hyper-parameters (``label_schema``: the class and value names ``predict mode=head``
    writes). Testing writes ``predictions_file`` (every
    window's prediction) into the run directory and, for beat tagging when ``beats_file`` is
    set, one row per detected and per annotated beat
    (:func:`heartgpt.inference.beat_metrics.beat_rows`).
    """

    predictions_file: str = TEST_PREDICTIONS
    beats_file: str | None = None
    confusion_file: str = TEST_CONFUSION

    def __init__(
        self,
        model_config: Mapping[str, Any],
        modality: str,
        task: str,
        head: Mapping[str, Any],
        pretrained: str | None,
        lr: float,
        betas: Sequence[float],
        weight_decay: float,
        warmup_steps: int,
        lr_decay_steps: int | None,
        min_lr_ratio: float,
        seed: int,
        beats: Mapping[str, Any] | None,
        compile: bool = False,
        decay_params: str = "linear",
        lora: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        head, beats = plain(head), plain(beats)
        model_config = GPTConfig.from_dict(plain(model_config)).to_dict()
        task_head = build_head(head, model_config["n_embd"])
        model_config["out_features"] = task_head.objective.n_out
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
        self.task_head = task_head
        self.label_names: tuple[str, ...] = ("label",)  # the DataModule's, at setup
        self.class_names: tuple[str, ...] | None = None
        beat_scores = self._beat_scores(beats, get_modality(modality).sample_rate)

        # One attribute per stage (torchmetrics' convention: a ModuleDict key 'train' would
        # shadow nn.Module.train).
        for stage in STAGES:
            # evaluation sums in float64, over windows each computed in the same batch on any
            # number of devices (heartgpt.data.EvalSampler): 1 and N processes agree exactly
            loss = MeanMetric() if stage == "train" else MeanMetric().set_dtype(torch.float64)
            setattr(self, f"{stage}_loss", loss)
            if stage != "train":
                setattr(self, f"{stage}_windows", SumMetric())
            setattr(self, f"{stage}_metrics", task_head.objective.metrics(task_head.level))
            if stage != "train" and beat_scores is not None:  # peak finding: evaluation only
                setattr(self, f"{stage}_beats", beat_scores())
        self._test_rows: list[dict[str, Any]] = []
        self._test_beats: list[dict[str, Any]] = []

    def _beat_scores(self, beats: Mapping[str, Any] | None, rate: float):
        """A factory of :class:`BeatDetectionScores` (None: this head has no beat metrics)."""
        if beats is None:
            return None
        # the probability the beat detector reads: binary tagging at every position
        if misread_by_tools(self.hparams.head, per_position=True) is not None:
            raise ValueError("module.beats: beat metrics need binary tagging at every position "
                             "(head.kind=tag, outputs=1, stride=1)")
        samples = {k: v * rate / 1000 for k, v in beats.items()
                   if k.endswith("_ms") and v is not None}
        unknown = set(beats) - {"tolerance_ms", "peak_height", "peak_distance_ms", "peak_max_width_ms"}
        if unknown:
            raise ValueError(f"module.beats: unknown key(s) {sorted(unknown)}")
        max_width = samples.get("peak_max_width_ms")
        return lambda: BeatDetectionScores(
            tolerance=round(samples["tolerance_ms"]), height=float(beats["peak_height"]),
            distance=max(1, round(samples["peak_distance_ms"])),
            max_width=None if max_width is None else round(max_width))

    def initial_weights(self) -> str | None:
        return self.hparams.pretrained

    # ----------------------------------------------------------------------------- data

    def setup(self, stage: str) -> None:
        """Check the data against the head and, for value targets, standardise them by the
        training split (once: a resumed or loaded checkpoint brings its own)."""
        first = not self._prepared
        super().setup(stage)
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        if not first or datamodule is None or not hasattr(datamodule, "label_schema"):
            return
        schema: LabelSchema | None = datamodule.label_schema
        where = getattr(datamodule, "shard_dir", "the data")
        if datamodule.label_kind != self.task_head.label_kind:
            raise ShardError(f"{where}: data.label_kind={datamodule.label_kind} but a "
                             f"{self.task_head.kind} head needs {self.task_head.label_kind}")
        why = self.task_head.check_labels(schema)
        if why:
            raise ShardError(f"{where}: the {self.hparams.task} head cannot train on these "
                             f"shards: {why}")
        self.label_names, self.class_names = schema.names, schema.classes
        if stage == "fit":  # the checkpoint says what its outputs are (predict mode=head)
            self.hparams["label_schema"] = schema.to_dict()
        objective = self.task_head.objective
        if stage == "fit" and isinstance(objective, RegressionObjective) \
                and not bool(objective.standardised):
            objective.set_statistics(*datamodule.label_statistics())

    def _check_standardised(self) -> None:
        objective = self.task_head.objective
        if isinstance(objective, RegressionObjective) and not bool(objective.standardised):
            raise InputError(
                self.hparams.pretrained or "module.pretrained",
                "this regression head has no target statistics (the mean and std of its "
                "training labels, which a fine-tuned .ckpt stores): its outputs are in no "
                "known units; evaluate a checkpoint of a regression fine-tune")

    def on_validation_start(self) -> None:
        self._check_standardised()

    def on_test_start(self) -> None:
        self._check_standardised()

    # ----------------------------------------------------------------------------- steps

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """The head's raw outputs: (B, n_out) per window or (B, P, n_out) per position
        (logits, or standardised values); :meth:`predict` gives what a user reads."""
        hidden = self.model.hidden(tokens)  # (B, T, C)
        return self.task_head(self.model.head(hidden), hidden)

    def predict(self, tokens: torch.Tensor) -> torch.Tensor:
        """Probabilities (binary: (B,) or (B, P); K classes: (..., K)) or values in the
        labels' units (..., L)."""
        return self.task_head.objective.predict(self(tokens))

    def _step(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        target = batch[self.task_head.batch_key]  # (B,), (B, L) or (B, P)
        outputs = self(batch["tokens"])
        objective = self.task_head.objective
        loss = objective.loss(outputs, target)
        objective.update(getattr(self, f"{stage}_metrics"), outputs, target)
        if stage == "train":
            self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
            return loss
        stage_loss = getattr(self, f"{stage}_loss")
        stage_loss.update(loss.detach(), weight=target.numel())
        self.log(f"{stage}/loss", stage_loss, on_epoch=True, prog_bar=True)
        windows = getattr(self, f"{stage}_windows")
        windows.update(float(target.shape[0]))
        self.log(f"{stage}/windows", windows, on_epoch=True)
        predictions = objective.predict(outputs.detach())
        if hasattr(self, f"{stage}_beats"):
            getattr(self, f"{stage}_beats").update(predictions, target)
        if stage == "test":
            self._record(batch, predictions, target)
        return loss

    def _record(self, batch: dict[str, Any], predictions: torch.Tensor, target: torch.Tensor) -> None:
        objective = self.task_head.objective
        beats = self.beats_file and hasattr(self, "test_beats")
        for i, (row, subject) in enumerate(zip(batch["row"].tolist(), batch["subject"], strict=True)):
            self._test_rows.append({"row": row, "subject": subject,
                                    **objective.record(predictions[i], target[i], self.label_names)})
            if beats:
                scores = self.test_beats
                found = beat_rows(predictions[i].float().cpu().numpy(), target[i].cpu().numpy(),
                                  scores.peak_finder, scores.tolerance)
                self._test_beats.extend({"row": row, "subject": subject, **b} for b in found)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._step(batch, "test")

    def _log_epoch(self, stage: str) -> None:
        metrics = getattr(self, f"{stage}_metrics")
        computed = metrics.compute()
        scalars = self.task_head.objective.scalars(computed, self.label_names)
        self.log_dict({f"{stage}/{k}": v for k, v in scalars.items()})
        if stage == "test" and "confusion" in computed:
            self._write_confusion(computed["confusion"])
        metrics.reset()
        if hasattr(self, f"{stage}_beats"):
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
        if self.beats_file and hasattr(self, "test_beats"):
            self._write_rows(self._test_beats, self.beats_file, ("row", "position", "kind"))

    def _write_confusion(self, confusion: torch.Tensor) -> None:
        """``<run dir>/<confusion_file>``: counts, rows the true class, columns the predicted
        one (synced over ranks by the metric), written by rank 0."""
        if not self.trainer.is_global_zero:
            return
        names = list(self.class_names or range(confusion.shape[0]))
        path = Path(self.trainer.default_root_dir) / self.confusion_file
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["true \\ predicted", *names])
            for name, counts in zip(names, confusion.tolist(), strict=True):
                writer.writerow([name, *counts])

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
