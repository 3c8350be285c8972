"""The head kinds heartgpt ships: ``classify``, ``regress`` and ``tag``.

``classify`` is a sequence pooling with a binary (1 output) or multiclass objective (the paper's
AF model: binary at the last position); ``regress`` a sequence pooling with a regression;
``tag`` one output every ``stride`` positions with either (the beat detector: binary at stride
1). Their records (:data:`BUILTIN_KINDS`) seed :mod:`heartgpt.heads.registry`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from heartgpt.heads.objectives import (
    BinaryObjective,
    MulticlassObjective,
    Objective,
    RegressionObjective,
)
from heartgpt.heads.reductions import POOLINGS, Reduction, Strided, pooling
from heartgpt.heads.task_head import HeadKind, TaskHead

SEQUENCE_POOLINGS = tuple(POOLINGS)
TAG_TARGETS = ("class", "value")


def _outputs(spec: Mapping[str, Any]) -> int:
    outputs = int(spec.get("outputs", 1))
    if outputs < 1:
        raise ValueError(f"head.outputs must be >= 1, got {outputs}")
    return outputs


def _fit_loss(objective: Objective, loss: str | None) -> Objective:
    if loss is not None and loss not in objective.losses:
        raise ValueError(f"head.loss {loss!r} does not fit a {objective.name} head; "
                         f"use {objective.losses}")
    return objective


def _classes(spec: Mapping[str, Any], outputs: int) -> Objective:
    """1 output: binary; K >= 2: multiclass."""
    objective = (BinaryObjective(spec.get("pos_weight")) if outputs == 1
                 else MulticlassObjective(outputs))
    return _fit_loss(objective, spec.get("loss"))


def _values(spec: Mapping[str, Any], outputs: int) -> Objective:
    loss = spec.get("loss")
    objective = RegressionObjective(outputs, loss or RegressionObjective.losses[0],
                                    spec.get("huber_delta", 1.0))
    return _fit_loss(objective, loss)


def _pooled(spec: Mapping[str, Any], n_embd: int) -> Reduction:
    return pooling(str(spec.get("pooling", "last")), n_embd, SEQUENCE_POOLINGS)


def build_classify(spec: Mapping[str, Any], n_embd: int) -> TaskHead:
    """``kind: classify``: one class per window (``outputs`` 1: binary, K: softmax)."""
    objective = _classes(spec, _outputs(spec))
    return TaskHead(spec["kind"], _pooled(spec, n_embd), objective)


def build_regress(spec: Mapping[str, Any], n_embd: int) -> TaskHead:
    """``kind: regress``: ``outputs`` values per window."""
    objective = _values(spec, _outputs(spec))
    return TaskHead(spec["kind"], _pooled(spec, n_embd), objective)


def build_tag(spec: Mapping[str, Any], n_embd: int) -> TaskHead:
    """``kind: tag``: a class or ``outputs`` values every ``stride`` positions."""
    outputs = _outputs(spec)
    target = spec.get("target", "class")
    if target not in TAG_TARGETS:
        raise ValueError(f"head.target must be {' or '.join(map(repr, TAG_TARGETS))}, "
                         f"got {spec.get('target')!r}")
    objective = _values(spec, outputs) if target == "value" else _classes(spec, outputs)
    return TaskHead(spec["kind"], Strided(int(spec.get("stride", 1))), objective)


# ------------------------------------------------------------------ how the tools read them


def _predicts_values(head: Mapping[str, Any]) -> str:
    return f"is a {head.get('kind')} head predicting values (standardised), not probabilities"


def misread_classify(head: Mapping[str, Any], per_position: bool) -> str | None:
    """A binary classify head is one probability per window, whatever its pooling (the tools
    apply a pooling other than the last position through the head itself)."""
    if head.get("target") == "value":
        return _predicts_values(head)
    if per_position:
        return "is a classify head (one probability per window)"
    return None


def misread_regress(head: Mapping[str, Any], per_position: bool) -> str | None:
    """Values are no probabilities."""
    return _predicts_values(head)


def misread_tag(head: Mapping[str, Any], per_position: bool) -> str | None:
    """A binary tag head of stride 1 is one probability per position."""
    if head.get("target") == "value":
        return _predicts_values(head)
    if not per_position:
        return f"is a tag head (a probability every {head.get('stride', 1)} tokens)"
    if int(head.get("stride", 1)) != 1:
        return f"is a tag head of stride {head.get('stride')}, not every position"
    return None


CLASSIFY = HeadKind("classify", build_classify, (BinaryObjective, MulticlassObjective),
                    poolings=SEQUENCE_POOLINGS, misread=misread_classify)
REGRESS = HeadKind("regress", build_regress, (RegressionObjective,),
                   poolings=SEQUENCE_POOLINGS, misread=misread_regress)
TAG = HeadKind("tag", build_tag, (BinaryObjective, MulticlassObjective, RegressionObjective),
               targets=TAG_TARGETS, misread=misread_tag)
BUILTIN_KINDS = (CLASSIFY, REGRESS, TAG)
