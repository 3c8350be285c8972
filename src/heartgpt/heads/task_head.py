"""The task head and the record of a kind of head.

A :class:`TaskHead` is a :class:`~heartgpt.heads.reductions.Reduction` of the GPT's
per-position outputs and an :class:`~heartgpt.heads.objectives.Objective`; a :class:`HeadKind`
says how one ``module.head.kind`` builds it from the config, which config values it reads and
how the inference tools may read its outputs (:mod:`heartgpt.heads.registry` holds them).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from heartgpt.data.labels import LabelSchema
from heartgpt.heads.objectives import Objective
from heartgpt.heads.reductions import Reduction


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


Builder = Callable[[Mapping[str, Any], int], TaskHead]  # (module.head, n_embd) -> the head
# (module.head, reads every position) -> why a probability tool would misread it (None: it won't)
Misread = Callable[[Mapping[str, Any], bool], str | None]


def unread_by_tools(head: Mapping[str, Any], per_position: bool) -> str | None:
    """The tools' reading of a kind that does not say otherwise: none reads it."""
    return f"is a {head.get('kind')} head, which no probability tool reads"


@dataclass(frozen=True)
class HeadKind:
    """One ``module.head.kind``.

    Attributes:
        name: the ``kind`` value.
        build: ``(module.head, n_embd) -> TaskHead``; a bad value raises ``ValueError``
            ``"head.<key> ..."``.
        objectives: the objectives it may build: its losses and metrics are theirs.
        poolings: the ``head.pooling`` values it reads (none: it reads no pooling).
        targets: the ``head.target`` values it reads (none: it reads no target).
        misread: ``(module.head, per_position) -> why`` a tool reading one probability per
            window (``per_position``: per token; AF screening, beat detection, their beat
            metrics) would misread this head's outputs, None when it reads them as trained.
    """

    name: str
    build: Builder
    objectives: tuple[type[Objective], ...]
    poolings: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()
    misread: Misread = unread_by_tools

    @property
    def losses(self) -> tuple[str, ...]:
        """The ``head.loss`` values of its objectives."""
        return tuple(dict.fromkeys(loss for o in self.objectives for loss in o.losses))
