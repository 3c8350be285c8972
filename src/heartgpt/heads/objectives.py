"""Objectives: the loss, predictions and metrics of one kind of target.

``binary`` (one logit, BCE, sigmoid: AF, beats), ``multiclass`` (K logits, cross-entropy,
softmax) or ``regression`` (L values, MSE or Huber on targets standardised by the training
split's mean and std, which the checkpoint stores; predictions in the original units). Each
names the ``head.loss`` values it takes (:attr:`Objective.losses`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn import functional as F

from heartgpt.data.labels import LabelSchema

if TYPE_CHECKING:
    from torchmetrics import MetricCollection

BASELINE = "baseline_"  # regression metrics of always predicting the training split's mean

# torchmetrics is imported where metrics are made, not here: the tools that only read the head
# registry (predict, screen_af, ...) would pay for its import (~0.8 s) on every start.


class Objective(nn.Module):
    """Loss, predictions and metrics of one kind of target.

    ``outputs`` are the reduction's (..., n_out); ``target`` the batch's label (B,)/(B, L) or
    targets (B, P) as float32 (class indices as numbers)."""

    name = ""
    losses: tuple[str, ...] = ()  # the ``head.loss`` values it takes (the first is the default)
    label_kind = "class"  # what the shards must hold: 'class' | 'value'

    def __init__(self, n_out: int) -> None:
        super().__init__()
        self.n_out = n_out

    def loss(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def predict(self, outputs: torch.Tensor) -> torch.Tensor:
        """What a user reads: probabilities, or values in the labels' units."""
        raise NotImplementedError

    def metrics(self, level: str) -> MetricCollection:
        """This objective's metrics for outputs at the ``level`` ('sequence' | 'position')."""
        raise NotImplementedError

    def update(self, metrics: MetricCollection, outputs: torch.Tensor, target: torch.Tensor) -> None:
        raise NotImplementedError

    def scalars(self, computed: dict[str, torch.Tensor], names: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """The numbers to log from ``metrics.compute()`` (``names``: the label names)."""
        return computed

    def check_schema(self, schema: LabelSchema) -> str | None:
        """Why shards of ``schema`` cannot train this objective (None: they can)."""
        if schema.kind != self.label_kind:
            return f"the head predicts {'classes' if self.label_kind == 'class' else 'values'}"
        return None

    def record(self, prediction: torch.Tensor, target: torch.Tensor,
               names: tuple[str, ...]) -> dict[str, Any]:
        """Columns of one window's row in ``test_predictions.csv``."""
        raise NotImplementedError


class BinaryObjective(Objective):
    """One logit: BCE-with-logits (``pos_weight`` for sparse positives), sigmoid probability."""

    name = "binary"
    losses = ("bce",)

    def __init__(self, pos_weight: float | None = None) -> None:
        super().__init__(1)
        self.register_buffer("pos_weight", torch.tensor(float(pos_weight or 1.0)), persistent=False)

    def loss(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(outputs[..., 0].float(), target.float(),
                                                  pos_weight=self.pos_weight)

    def predict(self, outputs: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(outputs[..., 0].float())  # (B,) or (B, P)

    def metrics(self, level: str) -> MetricCollection:
        from torchmetrics import MetricCollection
        from torchmetrics.classification import (
            BinaryAccuracy,
            BinaryAUROC,
            BinaryAveragePrecision,
            BinaryF1Score,
            BinaryRecall,
            BinarySpecificity,
        )

        if level == "position":  # binned: memory stays bounded over every position of the set
            return MetricCollection({"auroc": BinaryAUROC(thresholds=200)})
        return MetricCollection({
            "auroc": BinaryAUROC(), "ap": BinaryAveragePrecision(), "acc": BinaryAccuracy(),
            "f1": BinaryF1Score(), "sensitivity": BinaryRecall(), "specificity": BinarySpecificity(),
        })

    def update(self, metrics: MetricCollection, outputs: torch.Tensor, target: torch.Tensor) -> None:
        metrics.update(self.predict(outputs.detach()).flatten(), target.flatten().long())

    def check_schema(self, schema: LabelSchema) -> str | None:
        why = super().check_schema(schema)
        if why is None and schema.num_classes != 2:
            return "a 1-output head is binary: the shards must hold 2 classes"
        return why

    def record(self, prediction: torch.Tensor, target: torch.Tensor,
               names: tuple[str, ...]) -> dict[str, Any]:
        if prediction.ndim == 0:
            return {"label": int(target.item()), "prob": float(prediction.item())}
        return {"positives": int(target.sum().item()), "mean_prob": float(prediction.mean().item())}


class MulticlassObjective(Objective):
    """K logits: cross-entropy, softmax probabilities; macro AUROC / F1, accuracy, confusion."""

    name = "multiclass"
    losses = ("ce",)

    def __init__(self, num_classes: int) -> None:
        if num_classes < 2:
            raise ValueError(f"a multiclass head needs >= 2 outputs, got {num_classes}")
        super().__init__(num_classes)

    def loss(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs.float().reshape(-1, self.n_out), target.long().reshape(-1))

    def predict(self, outputs: torch.Tensor) -> torch.Tensor:
        return torch.softmax(outputs.float(), dim=-1)  # (..., K)

    def metrics(self, level: str) -> MetricCollection:
        from torchmetrics import MetricCollection
        from torchmetrics.classification import (
            MulticlassAccuracy,
            MulticlassAUROC,
            MulticlassConfusionMatrix,
            MulticlassF1Score,
        )

        k = self.n_out
        return MetricCollection({
            "auroc": MulticlassAUROC(k, average="macro"),
            "acc": MulticlassAccuracy(k, average="micro"),
            "balanced_acc": MulticlassAccuracy(k, average="macro"),
            "f1": MulticlassF1Score(k, average="macro"),
            "confusion": MulticlassConfusionMatrix(k),
        })

    def update(self, metrics: MetricCollection, outputs: torch.Tensor, target: torch.Tensor) -> None:
        metrics.update(self.predict(outputs.detach()).reshape(-1, self.n_out),
                       target.long().reshape(-1))

    def scalars(self, computed: dict[str, torch.Tensor], names: tuple[str, ...]) -> dict[str, torch.Tensor]:
        return {k: v for k, v in computed.items() if k != "confusion"}  # (K, K): written, not logged

    def check_schema(self, schema: LabelSchema) -> str | None:
        why = super().check_schema(schema)
        if why is None and schema.num_classes != self.n_out:
            return f"the head has {self.n_out} classes"
        return why

    def record(self, prediction: torch.Tensor, target: torch.Tensor,
               names: tuple[str, ...]) -> dict[str, Any]:
        if prediction.ndim == 1:  # one window: (K,)
            return {"label": int(target.item()), "predicted": int(prediction.argmax().item()),
                    **{f"prob_{c}": float(p) for c, p in enumerate(prediction.tolist())}}
        predicted = prediction.argmax(dim=-1)  # (P,)
        return {"positions": int(target.numel()),
                "correct": int((predicted == target.long()).sum().item())}


class RegressionObjective(Objective):
    """L values: MSE or Huber on standardised targets; MAE/RMSE/R2/Pearson in original units.

    ``mean``/``std`` (buffers, saved with the checkpoint) are the training split's, set once
    before the first step (:meth:`FinetuneModule.setup`); NaN targets (no value at a position)
    are left out of the loss and the metrics. Beside the model's MAE and RMSE the metrics hold
    ``baseline_mae`` / ``baseline_rmse``: the errors of always predicting that training mean
    (what a model collapsed to the mean scores), on the same values (R2 compares to the
    evaluated set's own mean instead)."""

    name = "regression"
    losses = ("mse", "huber")
    label_kind = "value"

    def __init__(self, num_targets: int, loss: str = "mse", huber_delta: float = 1.0) -> None:
        super().__init__(num_targets)
        if loss not in self.losses:
            raise ValueError(f"head.loss must be one of {self.losses} for values, got {loss!r}")
        self.loss_name, self.huber_delta = loss, float(huber_delta)
        self.register_buffer("mean", torch.zeros(num_targets))
        self.register_buffer("std", torch.ones(num_targets))
        self.register_buffer("standardised", torch.tensor(False))  # mean/std set from data

    def set_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """The training targets' mean and std, one per output (std 0 becomes 1)."""
        self.mean.copy_(torch.as_tensor(mean, dtype=torch.float32).reshape(self.n_out))
        std = torch.as_tensor(std, dtype=torch.float32).reshape(self.n_out)
        self.std.copy_(torch.where(std > 0, std, torch.ones_like(std)))
        self.standardised.fill_(True)

    def _pairs(self, outputs: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(outputs, targets, finite mask) as (N, L) in standardised units."""
        out = outputs.float().reshape(-1, self.n_out)
        tgt = target.float().reshape(-1, self.n_out)
        return out, (tgt - self.mean) / self.std, torch.isfinite(tgt)

    def loss(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        out, tgt, ok = self._pairs(outputs, target)
        if not ok.any():
            return out.sum() * 0.0  # a batch without a single value: no gradient, no NaN
        if self.loss_name == "huber":
            return F.huber_loss(out[ok], tgt[ok], delta=self.huber_delta)
        return F.mse_loss(out[ok], tgt[ok])

    def predict(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.float() * self.std + self.mean  # (..., L) in the labels' units

    def check_schema(self, schema: LabelSchema) -> str | None:
        why = super().check_schema(schema)
        if why is None and schema.width != self.n_out:
            return f"the head predicts {self.n_out} values"
        return why

    def metrics(self, level: str) -> MetricCollection:
        from torchmetrics import MetricCollection
        from torchmetrics.regression import (
            MeanAbsoluteError,
            MeanSquaredError,
            PearsonCorrCoef,
            R2Score,
        )
        from torchmetrics.wrappers import MultioutputWrapper

        def per_target(metric: Any) -> MultioutputWrapper:
            return MultioutputWrapper(metric, self.n_out, remove_nans=True)

        return MetricCollection({
            "mae": per_target(MeanAbsoluteError()), "rmse": per_target(MeanSquaredError(squared=False)),
            "r2": per_target(R2Score()), "pearson": per_target(PearsonCorrCoef()),
            f"{BASELINE}mae": per_target(MeanAbsoluteError()),
            f"{BASELINE}rmse": per_target(MeanSquaredError(squared=False)),
        }, compute_groups=False)

    def update(self, metrics: MetricCollection, outputs: torch.Tensor, target: torch.Tensor) -> None:
        """The model's predictions into its metrics, the training mean into the baseline's."""
        predicted = self.predict(outputs.detach()).reshape(-1, self.n_out)
        target = target.float().reshape(-1, self.n_out)
        baseline = self.mean.expand_as(target)  # (N, L): the same NaN mask as the model's
        for name, metric in metrics.items(copy_state=False):
            metric.update(baseline if name.startswith(BASELINE) else predicted, target)

    def scalars(self, computed: dict[str, torch.Tensor], names: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """One number per metric and target: ``mae``, or ``mae_sbp``/``mae_dbp`` for several."""
        if len(names) == 1:
            return {k: v.reshape(-1)[0] for k, v in computed.items()}
        return {f"{k}_{n}": v[i] for k, v in computed.items() for i, n in enumerate(names)}

    def record(self, prediction: torch.Tensor, target: torch.Tensor,
               names: tuple[str, ...]) -> dict[str, Any]:
        if prediction.ndim == 1 and len(names) == prediction.numel():  # one window: (L,)
            return {**{f"{n}": float(t) for n, t in zip(names, target.reshape(-1).tolist(), strict=True)},
                    **{f"predicted_{n}": float(p) for n, p in zip(names, prediction.tolist(), strict=True)}}
        pred, tgt = prediction.reshape(-1), target.float().reshape(-1)
        ok = torch.isfinite(tgt)
        per_name = prediction.reshape(-1, len(names))  # (P, L): the values at each position
        return {"positions": int(ok.sum().item()),
                "mae": float((pred[ok] - tgt[ok]).abs().mean().item()) if ok.any() else float("nan"),
                **{f"values_{n}": " ".join(f"{v:.9g}" for v in per_name[:, i].tolist())
                   for i, n in enumerate(names)}}
