"""The ``module.head`` of checkpoints written before heads were config, and of the released
fine-tunes (which carry no head of their own)."""

from __future__ import annotations

from typing import Any

from heartgpt.heads.builtin import CLASSIFY, TAG
from heartgpt.heads.registry import head_kinds


def legacy_head(head: str, pooling: str = "last", pos_weight: float | None = None) -> dict[str, Any]:
    """``module.head`` of a checkpoint from before heads were config (``head: sequence|token``)."""
    if head == "sequence":
        return {"kind": CLASSIFY.name, "outputs": 1, "pooling": pooling, "pos_weight": pos_weight}
    if head == "token":
        return {"kind": TAG.name, "outputs": 1, "target": "class", "stride": 1, "pos_weight": pos_weight}
    raise ValueError(f"head must be a mapping (kind: {'|'.join(head_kinds())}), got {head!r}")


# The released fine-tunes' heads: AF reads the last position, the beat detector every position.
RELEASED_HEADS = {"af": legacy_head("sequence"), "beats": legacy_head("token")}


def head_of(hparams: dict[str, Any]) -> dict[str, Any] | None:
    """The ``module.head`` a LightningModule's hyper-parameters state (None: not a fine-tune)."""
    head = hparams.get("head")
    if isinstance(head, str):
        return legacy_head(head, hparams.get("pooling", "last"), hparams.get("pos_weight"))
    return dict(head) if isinstance(head, dict) else None
