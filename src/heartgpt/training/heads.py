"""Fine-tuning heads as config: what a task reads off the GPT and how it is scored.

The GPT ends in one ``nn.Linear`` (``model.head``, ``out_features`` outputs at every position);
a :class:`TaskHead` turns those per-position outputs into the task's predictions and holds the
task's loss and metrics. It is two choices, both from ``module.head`` in the config:

- a **reduction** of the (B, T, n_out) outputs: ``last`` position (the paper's AF model),
  ``mean`` over positions, ``attention`` (a learned softmax weighting of positions), or
  ``stride`` (per-position tagging: every ``stride``-th position, the one that has seen the
  whole chunk it describes; stride 1 is every position, as the beat detector);
- an **objective**: ``binary`` (one logit, BCE, sigmoid: AF, beats), ``multiclass`` (K logits,
  cross-entropy, softmax) or ``regression`` (L values, MSE or Huber on targets standardised
  by the training split's mean and std, which the checkpoint stores; predictions in the
  original units).

``kind: classify`` is a sequence reduction with binary (1 output) or multiclass objective;
``regress`` a sequence reduction with regression; ``tag`` the stride reduction with either.
:func:`build_head` maps the config to the two parts; ``FinetuneModule`` only calls the head.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryAUROC,
    BinaryAveragePrecision,
    BinaryF1Score,
    BinaryRecall,
    BinarySpecificity,
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
)
from torchmetrics.regression import MeanAbsoluteError, MeanSquaredError, PearsonCorrCoef, R2Score
from torchmetrics.wrappers import MultioutputWrapper

from heartgpt.data.labels import LabelSchema

KINDS = ("classify", "regress", "tag")
POOLINGS = ("last", "mean", "attention")
LOSSES = {"binary": ("bce",), "multiclass": ("ce",), "regression": ("mse", "huber")}


# ----------------------------------------------------------------------------- reductions


class Reduction(nn.Module):
    """(B, T, n_out) per-position outputs (and (B, T, C) hidden states) -> the task's outputs."""

    level = "sequence"  # 'sequence': (B, n_out) | 'position': (B, P, n_out)

    def forward(self, outputs: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class LastPosition(Reduction):
    """The last position: it has seen the whole window (the released AF models)."""

    def forward(self, outputs: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        return outputs[:, -1]  # (B, n_out)


class MeanPosition(Reduction):
    """The mean over positions (the head is linear: mean of outputs = head(mean hidden))."""

    def forward(self, outputs: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        return outputs.mean(dim=1)  # (B, n_out)


class AttentionPooling(Reduction):
    """A learned softmax weighting of positions, scored from the final hidden states.

    ``sum_t a_t head(h_t) = head(sum_t a_t h_t)``: the same as pooling the hidden states first.
    Its scorer trains whatever the freeze strategy (it is new, as the head)."""

    def __init__(self, n_embd: int) -> None:
        super().__init__()
        self.score = nn.Linear(n_embd, 1)
        nn.init.zeros_(self.score.weight)  # starts as the mean over positions
        nn.init.zeros_(self.score.bias)

    def forward(self, outputs: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(self.score(hidden).float(), dim=1)  # (B, T, 1)
        return (weights * outputs).sum(dim=1)  # (B, n_out)


class Strided(Reduction):
    """Every ``stride``-th position, ending each chunk of ``stride`` tokens: (B, T // stride, n_out).

    The k-th output describes tokens ``k*stride .. (k+1)*stride - 1`` and is read where the
    causal model has seen all of them."""

    level = "position"

    def __init__(self, stride: int) -> None:
        super().__init__()
        if stride < 1:
            raise ValueError(f"head.stride must be >= 1, got {stride}")
        self.stride = stride

    def forward(self, outputs: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        return outputs[:, self.stride - 1 :: self.stride]  # (B, T // stride, n_out)


def _reduction(kind: str, pooling: str, stride: int, n_embd: int) -> Reduction:
    if kind == "tag":
        return Strided(stride)
    poolings = {"last": LastPosition, "mean": MeanPosition,
                "attention": lambda: AttentionPooling(n_embd)}
    if pooling not in poolings:
        raise ValueError(f"head.pooling must be one of {POOLINGS}, got {pooling!r}")
    return poolings[pooling]()


# ----------------------------------------------------------------------------- objectives


class Objective(nn.Module):
    """Loss, predictions and metrics of one kind of target.

    ``outputs`` are the reduction's (..., n_out); ``target`` the batch's label (B,)/(B, L) or
    targets (B, P) as float32 (class indices as numbers)."""

    name = ""
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

    def __init__(self, pos_weight: float | None = None) -> None:
        super().__init__(1)
        self.register_buffer("pos_weight", torch.tensor(float(pos_weight or 1.0)), persistent=False)

    def loss(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(outputs[..., 0].float(), target.float(),
                                                  pos_weight=self.pos_weight)

    def predict(self, outputs: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(outputs[..., 0].float())  # (B,) or (B, P)

    def metrics(self, level: str) -> MetricCollection:
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

    def __init__(self, num_classes: int) -> None:
        if num_classes < 2:
            raise ValueError(f"a multiclass head needs >= 2 outputs, got {num_classes}")
        super().__init__(num_classes)

    def loss(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs.float().reshape(-1, self.n_out), target.long().reshape(-1))

    def predict(self, outputs: torch.Tensor) -> torch.Tensor:
        return torch.softmax(outputs.float(), dim=-1)  # (..., K)

    def metrics(self, level: str) -> MetricCollection:
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
    are left out of the loss and the metrics."""

    name = "regression"
    label_kind = "value"

    def __init__(self, num_targets: int, loss: str = "mse", huber_delta: float = 1.0) -> None:
        super().__init__(num_targets)
        if loss not in LOSSES["regression"]:
            raise ValueError(f"head.loss must be one of {LOSSES['regression']} for values, got {loss!r}")
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
        def per_target(metric: Any) -> MultioutputWrapper:
            return MultioutputWrapper(metric, self.n_out, remove_nans=True)

        return MetricCollection({
            "mae": per_target(MeanAbsoluteError()), "rmse": per_target(MeanSquaredError(squared=False)),
            "r2": per_target(R2Score()), "pearson": per_target(PearsonCorrCoef()),
        }, compute_groups=False)

    def update(self, metrics: MetricCollection, outputs: torch.Tensor, target: torch.Tensor) -> None:
        metrics.update(self.predict(outputs.detach()).reshape(-1, self.n_out),
                       target.float().reshape(-1, self.n_out))

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
        return {"positions": int(ok.sum().item()),
                "mae": float((pred[ok] - tgt[ok]).abs().mean().item()) if ok.any() else float("nan")}


# ----------------------------------------------------------------------------- the head


class TaskHead(nn.Module):
    """A reduction of the GPT's per-position outputs and an objective, from ``module.head``."""

    def __init__(self, kind: str, reduction: Reduction, objective: Objective) -> None:
        super().__init__()
        self.kind, self.reduction, self.objective = kind, reduction, objective

    @property
    def level(self) -> str:
        return self.reduction.level

    @property
    def batch_key(self) -> str:
        """Where the batch holds this head's target: a window's ``label`` or per-position ``targets``."""
        return "label" if self.level == "sequence" else "targets"

    @property
    def label_kind(self) -> str:
        """The shard ``label_kind`` this head trains on."""
        return "sequence" if self.level == "sequence" else "token"

    def forward(self, outputs: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        return self.reduction(outputs, hidden)

    def check_labels(self, schema: LabelSchema | None) -> str | None:
        """Why shards with labels ``schema`` cannot train this head (None: they can)."""
        if schema is None:
            return "the shards hold no labels"
        why = self.objective.check_schema(schema)
        if why is None and self.level == "position" and schema.stride != self.reduction.stride:
            why = f"the head tags every {self.reduction.stride} tokens"
        if why is None and self.level == "sequence" and schema.stride != 1:
            why = "the head predicts one value per window"
        return None if why is None else f"{why}; the shards hold {schema.describe()}"


def build_head(spec: Mapping[str, Any], n_embd: int) -> TaskHead:
    """The :class:`TaskHead` of a ``module.head`` config::

        kind: classify | regress | tag
        outputs: 1            # classify/tag classes: 1 = binary (sigmoid), K >= 2: softmax;
                              # regress / tag values: how many targets
        target: class         # tag only: class | value
        pooling: last         # classify/regress: last | mean | attention
        stride: 1             # tag: one output every `stride` tokens
        loss: null            # regression: mse | huber (null: mse); classes: bce (1) / ce (K)
        huber_delta: 1.0      # in standard deviations
        pos_weight: null      # binary: BCE weight of positives
    """
    kind = spec.get("kind")
    if kind not in KINDS:
        raise ValueError(f"head.kind must be one of {KINDS}, got {kind!r}")
    outputs = int(spec.get("outputs", 1))
    if outputs < 1:
        raise ValueError(f"head.outputs must be >= 1, got {outputs}")
    values = kind == "regress" or (kind == "tag" and spec.get("target", "class") == "value")
    if kind == "tag" and spec.get("target", "class") not in ("class", "value"):
        raise ValueError(f"head.target must be 'class' or 'value', got {spec.get('target')!r}")
    loss = spec.get("loss")
    objective: Objective
    if values:
        objective = RegressionObjective(outputs, loss or "mse", spec.get("huber_delta", 1.0))
    elif outputs == 1:
        objective = BinaryObjective(spec.get("pos_weight"))
    else:
        objective = MulticlassObjective(outputs)
    allowed = LOSSES[objective.name]
    if loss is not None and loss not in allowed:
        raise ValueError(f"head.loss {loss!r} does not fit a {objective.name} head; use {allowed}")
    reduction = _reduction(kind, str(spec.get("pooling", "last")), int(spec.get("stride", 1)), n_embd)
    return TaskHead(kind, reduction, objective)
