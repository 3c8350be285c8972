"""Our safetensors export: the weights of a plain :class:`~heartgpt.model.GPT` with its config,
modality, task, fine-tuning head and synthetic-data flag as the file's metadata.

A fine-tune whose head keeps tensors outside the GPT (attention pooling's scorer, a
regression's target mean and std) stores them too, under ``task_head.`` (the ``.ckpt``'s own
prefix), and the labels it was trained on as the metadata ``label_schema``: :func:`load_safetensors`
gives them back as ``head_state`` and ``hparams["label_schema"]``, as a ``.ckpt`` does."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from heartgpt import __version__
from heartgpt.files import atomic_path
from heartgpt.heads.legacy import RELEASED_HEADS
from heartgpt.model.checkpoint_format import (
    TASK_HEAD_PREFIX,
    CheckpointError,
    LoadedModel,
    model_of,
)
from heartgpt.model.gpt import GPT

SAFETENSORS_FORMAT = "heartgpt-safetensors-1"


def save_safetensors(
    model: GPT, path: str | os.PathLike, modality: str | None = None, task: str = "pretrain",
    synthetic: bool = False, head: dict[str, Any] | None = None,
    head_state: dict[str, torch.Tensor] | None = None, label_schema: dict[str, Any] | None = None,
) -> Path:
    """Export ``model`` to a safetensors file that carries its own config, its fine-tuning
    ``head`` (how its outputs are read) and whether it was trained on the SYNTHETIC demo data;
    written atomically. ``head_state``: the head's tensors outside the GPT (stored under
    ``task_head.``); ``label_schema``: the labels it was trained on (metadata)."""
    from safetensors.torch import save_file

    path = Path(path)
    metadata = {
        "format": SAFETENSORS_FORMAT,
        "config": json.dumps(model.config.to_dict()),
        "modality": modality or "",
        "task": task,
        "synthetic": "true" if synthetic else "false",
        "heartgpt_version": __version__,
        **({"head": json.dumps(head, sort_keys=True)} if head else {}),
        **({"label_schema": json.dumps(label_schema, sort_keys=True)} if label_schema else {}),
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    for key, value in (head_state or {}).items():
        tensors[TASK_HEAD_PREFIX + key] = value.detach().cpu().contiguous()
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path



def load_safetensors(path: str | os.PathLike) -> LoadedModel:
    """Load a file written by :func:`save_safetensors` (eval mode)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
    except Exception as e:
        raise CheckpointError(path, f"cannot read as safetensors: {e}") from e
    if metadata.get("format") != SAFETENSORS_FORMAT:
        raise CheckpointError(path, f"not a heartgpt safetensors export "
                              f"(format={metadata.get('format')!r})")
    try:
        config = json.loads(metadata.get("config", ""))
    except ValueError:
        raise CheckpointError(path, "its 'config' metadata is not JSON") from None
    head_state = {k.removeprefix(TASK_HEAD_PREFIX): tensors.pop(k) for k in list(tensors)
                  if k.startswith(TASK_HEAD_PREFIX)}
    model = model_of(config, tensors, path)
    task = metadata.get("task", "pretrain")
    try:
        head = json.loads(metadata["head"]) if metadata.get("head") else RELEASED_HEADS.get(task)
        schema = json.loads(metadata["label_schema"]) if metadata.get("label_schema") else None
    except ValueError:
        raise CheckpointError(path, "its 'head' or 'label_schema' metadata is not JSON") from None
    return LoadedModel(model, metadata.get("modality") or None, task, str(path),
                       metadata.get("synthetic") == "true", head=head,
                       hparams={} if schema is None else {"label_schema": schema},
                       head_state=head_state)
