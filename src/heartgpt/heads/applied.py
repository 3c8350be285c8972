"""A fine-tune applied: the GPT and its rebuilt task head, tokens in, the label's terms out.

:class:`AppliedHead` maps tokens (B, T) to what the head predicts, in the terms of the labels
it was trained on: a probability per class (a binary head gives both, ``[1 - p, p]``), or
values in the labels' units (the training split's standardisation undone), per window (B, K)
or per ``stride`` positions (B, T // stride, K). It is tensors in, tensors out, with no
data-dependent Python branch, so an export can trace it. :class:`HeadReading` says how to read
those K columns: class names or value names from the shards' :class:`LabelSchema`, which a
fine-tune stores in its hyper-parameters (``label_schema``); a checkpoint from before that
reads as ``class_<k>`` / ``value_<k>`` and says so (``names_from``).

A model whose ``applies_head`` attribute is true (an ``.onnx`` export of an
:class:`AppliedHead`: the pooling and the undone standardisation are in its graph) already
gives these outputs: :func:`applied_head` wraps it as it is, its head rebuilt only to read it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from heartgpt.data.labels import LabelSchema
from heartgpt.heads.objectives import BinaryObjective, RegressionObjective
from heartgpt.heads.registry import build_head
from heartgpt.heads.task_head import TaskHead

NAMES_FROM_SCHEMA = "label_schema"
NAMES_UNKNOWN = "unknown (the checkpoint stores no label schema)"


@dataclass(frozen=True)
class HeadReading:
    """How to read an :class:`AppliedHead`'s K output columns.

    Attributes:
        kind: 'class' (probabilities, one per class) | 'value' (values in the labels' units).
        columns: the class names (kind 'class') or the value names (label columns, e.g.
            ``hr_bpm``: their units are the labels').
        label: the label's name (the predicted class's column).
        level: 'sequence' (one row per window) | 'position' (one every ``stride`` tokens).
        stride: tokens per output position (1 for 'sequence').
        names_from: :data:`NAMES_FROM_SCHEMA` or :data:`NAMES_UNKNOWN`.
    """

    kind: str
    columns: tuple[str, ...]
    label: str
    level: str
    stride: int
    names_from: str


def head_reading(task_head: TaskHead, schema: Mapping[str, Any] | None, source: str = "") -> HeadReading:
    """The :class:`HeadReading` of ``task_head`` trained on labels ``schema`` (a
    :meth:`LabelSchema.to_dict`; None: names ``class_<k>`` / ``value_<k>``).

    Raises:
        ValueError: ``"<source>: ..."`` when the schema does not fit the head.
    """
    objective = task_head.objective
    kind = "value" if isinstance(objective, RegressionObjective) else "class"
    width = 2 if isinstance(objective, BinaryObjective) else objective.n_out
    stride = int(getattr(task_head.reduction, "stride", 1))
    if schema is None:
        names = tuple(f"{kind}_{k}" for k in range(width))
        return HeadReading(kind, names, "label" if kind == "class" else "", task_head.level,
                           stride, NAMES_UNKNOWN)
    labels = LabelSchema.from_dict(dict(schema))
    why = task_head.check_labels(labels)
    if why:
        raise ValueError(f"{source}: its label_schema does not fit its head: {why}")
    columns = labels.classes if kind == "class" else labels.names
    assert columns is not None
    return HeadReading(kind, tuple(columns), labels.names[0], task_head.level, stride,
                       NAMES_FROM_SCHEMA)


class AppliedHead(nn.Module):
    """``gpt`` (``.hidden(tokens)`` and the linear ``.head``) and its ``task_head``: tokens
    (B, T) -> (B, K) per window or (B, T // stride, K) per position, probabilities per class
    or values in the labels' units. A ``gpt`` that ``applies_head`` (an exported
    :class:`AppliedHead`) gives them itself: ``task_head`` then only says how to read them."""

    def __init__(self, gpt: nn.Module, task_head: TaskHead,
                 reading: HeadReading | None = None) -> None:
        super().__init__()
        self.gpt, self.task_head = gpt, task_head
        self.reading = reading  # how to read the outputs (not used by forward)
        self.binary = isinstance(task_head.objective, BinaryObjective)  # fixed: traced away
        self.inside = bool(getattr(gpt, "applies_head", False))  # fixed: traced away

    @property
    def config(self) -> Any:
        """The network's :class:`~heartgpt.model.GPTConfig` (window length, vocabulary)."""
        return self.gpt.config

    @property
    def block_size(self) -> int:
        return int(self.gpt.config.block_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.inside:  # an exported AppliedHead: its outputs are already these
            return self.gpt(tokens)
        hidden = self.gpt.hidden(tokens)  # (B, T, C)
        outputs = self.task_head(self.gpt.head(hidden), hidden)  # (B, n_out) | (B, P, n_out)
        predicted = self.task_head.objective.predict(outputs)
        if self.binary:  # (B,) | (B, P): the positive class's probability
            return torch.stack([1.0 - predicted, predicted], dim=-1)
        return predicted


def applied_head(gpt: nn.Module, head: Mapping[str, Any], head_state: Mapping[str, torch.Tensor],
                 source: str, schema: Mapping[str, Any] | None = None) -> AppliedHead:
    """The fine-tune ``gpt`` with its ``head`` (``module.head``) rebuilt, its own tensors
    (``head_state``: attention scorer, a regression's mean/std) loaded, and its reading by the
    labels ``schema`` (:func:`head_reading`). A ``gpt`` that ``applies_head`` is used as it
    is (its graph holds the head's tensors; ``head_state`` is not needed).

    Raises:
        ValueError: ``"<source>: ..."`` when the head cannot be rebuilt or its tensors are
            missing (a regression head without its training statistics has no units).
    """
    try:
        task_head = build_head(head, int(gpt.config.n_embd))
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None
    if getattr(gpt, "applies_head", False):
        return AppliedHead(gpt, task_head, head_reading(task_head, schema, source)).eval()
    wanted = task_head.state_dict()
    missing = sorted(set(wanted) - set(head_state))
    if missing:
        raise ValueError(f"{source}: has no {', '.join(missing)} for its {task_head.kind} head "
                         "(only our fine-tuned .ckpt files hold a head's own tensors)")
    if wanted:
        task_head.load_state_dict({k: head_state[k] for k in wanted}, strict=True)
    objective = task_head.objective
    if isinstance(objective, RegressionObjective) and not bool(objective.standardised):
        raise ValueError(f"{source}: its regression head has no training statistics: its "
                         "values are in no known units")
    return AppliedHead(gpt, task_head, head_reading(task_head, schema, source)).eval()
