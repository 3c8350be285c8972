"""The registry of head kinds: ``module.head.kind`` -> its :class:`~heartgpt.heads.task_head.HeadKind`.

The one place that knows which kinds, poolings, targets and losses exist: :func:`build_head`
(what a run and every loader build), the config checks (``heartgpt.training.config_checks``),
the inference tools (:func:`misread_by_tools`) and the legacy head mapping read it. It starts
with :data:`~heartgpt.heads.builtin.BUILTIN_KINDS`; a new kind is a class, one
:func:`register_head_kind` call and a task yaml in ``conf/task/``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from heartgpt.heads.builtin import BUILTIN_KINDS
from heartgpt.heads.task_head import HeadKind, TaskHead, unread_by_tools

_KINDS: dict[str, HeadKind] = {kind.name: kind for kind in BUILTIN_KINDS}


def register_head_kind(kind: HeadKind) -> HeadKind:
    """Add ``kind`` to the registry (a name already there is refused); returns it."""
    if kind.name in _KINDS:
        raise ValueError(f"head kind {kind.name!r} is already registered")
    _KINDS[kind.name] = kind
    return kind


def unregister_head_kind(name: str) -> HeadKind:
    """Remove the kind ``name`` from the registry; returns its record."""
    return _KINDS.pop(name)


def head_kinds() -> tuple[str, ...]:
    """The registered ``head.kind`` values, in registration order."""
    return tuple(_KINDS)


def head_kind(name: str) -> HeadKind:
    """The record of kind ``name`` (``KeyError`` when none is registered)."""
    return _KINDS[name]


def _union(values: Any) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values))


def head_poolings() -> tuple[str, ...]:
    """Every ``head.pooling`` some registered kind reads."""
    return _union(p for kind in _KINDS.values() for p in kind.poolings)


def head_targets() -> tuple[str, ...]:
    """Every ``head.target`` some registered kind reads."""
    return _union(t for kind in _KINDS.values() for t in kind.targets)


def head_losses() -> tuple[str, ...]:
    """Every ``head.loss`` some registered kind takes."""
    return _union(loss for kind in _KINDS.values() for loss in kind.losses)


def build_head(spec: Mapping[str, Any], n_embd: int) -> TaskHead:
    """The :class:`TaskHead` of a ``module.head`` config (``n_embd``: the model width)::

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
    if kind not in _KINDS:
        raise ValueError(f"head.kind must be one of {head_kinds()}, got {kind!r}")
    return _KINDS[kind].build(spec, n_embd)


def misread_by_tools(head: Mapping[str, Any], per_position: bool) -> str | None:
    """Why a tool reading one probability per window (``per_position``: per token) would
    misread the outputs of a fine-tune with ``module.head`` ``head`` (None: it reads them as
    trained). A kind that is not registered is read by none."""
    kind = _KINDS.get(head.get("kind"))  # type: ignore[arg-type]
    if kind is None:
        return unread_by_tools(head, per_position)
    why = kind.misread(head, per_position)
    if why is None and int(head.get("outputs", 1)) != 1:
        why = f"is a {head.get('outputs')}-output head, not one probability"
    return why
