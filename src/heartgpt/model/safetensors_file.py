"""Our safetensors export: the weights of a plain :class:`~heartgpt.model.GPT` with its config,
modality, task, fine-tuning head and synthetic-data flag as the file's metadata."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from heartgpt import __version__
from heartgpt.files import atomic_path
from heartgpt.heads.legacy import RELEASED_HEADS
from heartgpt.model.checkpoint_format import CheckpointError, LoadedModel, model_of
from heartgpt.model.gpt import GPT

SAFETENSORS_FORMAT = "heartgpt-safetensors-1"


def save_safetensors(
    model: GPT, path: str | os.PathLike, modality: str | None = None, task: str = "pretrain",
    synthetic: bool = False, head: dict[str, Any] | None = None,
) -> Path:
    """Export ``model`` to a safetensors file that carries its own config, its fine-tuning
    ``head`` (how its outputs are read) and whether it was trained on the SYNTHETIC demo data;
    written atomically."""
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
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
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
    model = model_of(config, tensors, path)
    task = metadata.get("task", "pretrain")
    try:
        head = json.loads(metadata["head"]) if metadata.get("head") else RELEASED_HEADS.get(task)
    except ValueError:
        raise CheckpointError(path, "its 'head' metadata is not JSON") from None
    return LoadedModel(model, metadata.get("modality") or None, task, str(path),
                       metadata.get("synthetic") == "true", head=head)
