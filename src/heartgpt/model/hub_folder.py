"""A model folder for a model hub (``python -m heartgpt.export format=hub``): ``model.safetensors``,
``config.json``, ``trust.json`` (when the model holds an OOD reference) and a ``README.md``
model card (:mod:`heartgpt.model.model_card`).

- ``model.safetensors``: the GPT's weights and the head's tensors outside it (``task_head.*``),
  written by :func:`heartgpt.model.safetensors_file.save_safetensors` (so the file alone loads too).
- ``config.json`` (:func:`hub_config`): everything :func:`load_hub` needs, readable by a person:
  ``format`` (:data:`HUB_FORMAT`), ``architecture`` and ``model_config`` (the
  :class:`~heartgpt.model.GPTConfig`), ``modality``, ``task``, ``synthetic`` (trained on the
  SYNTHETIC demo data), ``vocabulary`` (size, token values, sampling rate), ``head`` (kind,
  outputs, pooling), ``label_schema`` (names, classes, stride), ``standardisation`` (a
  regression's target mean and std, for reading; the tensors in the weights file are what loads),
  ``calibration`` (the fitted temperature, or null), ``ood_reference`` (the name of the file
  holding it, or null), ``source`` (the exported file's name and sha256) and the version.
- ``trust.json``: the OOD reference (:class:`~heartgpt.heads.calibration.OodReference`: mean,
  precision, quantiles as lists, ``dtypes`` their torch dtypes; JSON round-trips float32 and
  float64 exactly).

:func:`load_hub` reads the folder (or its ``model.safetensors``) back as a
:class:`~heartgpt.model.checkpoint_format.LoadedModel` with its calibration and OOD reference;
:func:`heartgpt.model.checkpoints.load_model` and every ``checkpoint=`` take the folder.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from heartgpt import __version__
from heartgpt.data.tokenizer import LEVELS, MODALITIES
from heartgpt.files import atomic_path, sha256_file, write_json_atomic, write_text_atomic
from heartgpt.heads.calibration import Calibration, OodReference
from heartgpt.model.checkpoint_format import (
    TASK_HEAD_PREFIX,
    CheckpointError,
    LoadedModel,
    model_of,
    require_torch,
)
from heartgpt.model.safetensors_file import save_safetensors

HUB_FORMAT = "heartgpt-hub-1"
HUB_WEIGHTS = "model.safetensors"
HUB_CONFIG = "config.json"
HUB_TRUST = "trust.json"
HUB_CARD = "README.md"
HUB_FILES = (HUB_WEIGHTS, HUB_CONFIG, HUB_TRUST, HUB_CARD)  # what a hub folder may hold
_DTYPES = {"float32": torch.float32, "float64": torch.float64}  # of trust.json's tensors


def is_hub_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding :data:`HUB_CONFIG` and :data:`HUB_WEIGHTS`."""
    path = Path(path)
    return path.is_dir() and (path / HUB_CONFIG).is_file() and (path / HUB_WEIGHTS).is_file()


def is_hub_weights(path: str | os.PathLike) -> bool:
    """Whether ``path`` is the ``model.safetensors`` of a hub folder (a ``config.json`` beside it)."""
    path = Path(path)
    return path.name == HUB_WEIGHTS and is_hub_folder(path.parent)


def _standardisation(loaded: LoadedModel) -> dict[str, Any] | None:
    """A regression head's target mean and std (lists), or None."""
    state = loaded.head_state
    mean = next((v for k, v in state.items() if k.endswith("mean")), None)
    std = next((v for k, v in state.items() if k.endswith("std")), None)
    flag = next((v for k, v in state.items() if k.endswith("standardised")), None)
    if mean is None or std is None or (flag is not None and not bool(flag)):
        return None
    names = (loaded.hparams.get("label_schema") or {}).get("names")
    return {"names": names, "mean": mean.double().tolist(), "std": std.double().tolist()}


def hub_config(loaded: LoadedModel) -> dict[str, Any]:
    """What ``config.json`` holds for ``loaded`` (module docstring)."""
    gpt = require_torch(loaded, "a hub folder")
    source = Path(loaded.source)
    modality = MODALITIES.get(loaded.modality or "")
    return {
        "format": HUB_FORMAT,
        "library_name": "heartgpt",
        "heartgpt_version": __version__,
        "architecture": "GPT",
        "model_config": gpt.config.to_dict(),
        "modality": loaded.modality,
        "task": loaded.task,
        "synthetic": bool(loaded.synthetic),
        "vocabulary": {
            "vocab_size": gpt.config.vocab_size,
            "tokens": f"0..{LEVELS}: each window min-max scaled to 0..{LEVELS} and rounded",
            "sample_rate_hz": modality.sample_rate if modality else None,
        },
        "head": loaded.head,
        "label_schema": loaded.hparams.get("label_schema"),
        "standardisation": _standardisation(loaded),
        "calibration": loaded.calibration.to_dict() if loaded.calibration else None,
        "ood_reference": HUB_TRUST if loaded.ood_reference is not None else None,
        "source": {"file": source.name,
                   "sha256": sha256_file(source) if source.is_file() else ""},
    }


def _plain(value: Any) -> Any:
    """Tensors as (nested) lists, for JSON."""
    return value.tolist() if isinstance(value, torch.Tensor) else value


def write_hub(loaded: LoadedModel, folder: str | os.PathLike, card: str) -> Path:
    """Write the hub folder of ``loaded`` at ``folder`` with the model card ``card``; returns
    ``folder``. An existing folder is replaced only when it holds nothing but a hub folder's
    files (:data:`HUB_FILES`); each file is written atomically.

    Raises:
        CheckpointError: ``folder`` is a file, or a folder holding other files.
    """
    folder = Path(folder)
    if folder.exists():
        if not folder.is_dir():
            raise CheckpointError(folder, "is a file; a hub export writes a folder")
        others = sorted(p.name for p in folder.iterdir() if p.name not in HUB_FILES)
        if others:
            raise CheckpointError(folder, f"holds other files ({', '.join(others[:3])}); give "
                                  "an empty or new folder as out=")
        for name in HUB_FILES:
            (folder / name).unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    gpt = require_torch(loaded, "a hub folder")
    save_safetensors(gpt, folder / HUB_WEIGHTS, loaded.modality, loaded.task, loaded.synthetic,
                     head=loaded.head, head_state=loaded.head_state or None,
                     label_schema=loaded.hparams.get("label_schema"))
    if loaded.ood_reference is not None:
        stored = loaded.ood_reference.to_dict()
        reference = {k: _plain(v) for k, v in stored.items()}
        dtypes = {k: str(v.dtype).removeprefix("torch.") for k, v in stored.items()
                  if isinstance(v, torch.Tensor)}
        with atomic_path(folder / HUB_TRUST) as tmp:
            tmp.write_text(json.dumps({"ood_reference": reference, "dtypes": dtypes}) + "\n",
                           encoding="utf-8")
    write_json_atomic(folder / HUB_CONFIG, hub_config(loaded))
    write_text_atomic(folder / HUB_CARD, card)
    return folder


def remove_hub(folder: str | os.PathLike) -> None:
    """Remove a hub folder written by :func:`write_hub` (its files, then the folder if empty)."""
    folder = Path(folder)
    for name in HUB_FILES:
        (folder / name).unlink(missing_ok=True)
    if folder.is_dir() and not any(folder.iterdir()):
        shutil.rmtree(folder)


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(path, f"cannot read {what} as JSON: {e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(path, f"{what} is not a JSON object")
    return data


def _trust(folder: Path, config: dict[str, Any]) -> tuple[Calibration | None, OodReference | None]:
    calibration = reference = None
    try:
        if config.get("calibration"):
            calibration = Calibration.from_dict(config["calibration"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(folder / HUB_CONFIG, f"its calibration cannot be read: {e}") \
            from None
    name = config.get("ood_reference")
    if name:
        path = folder / str(name)
        if not path.is_file():
            raise CheckpointError(folder, f"its {HUB_CONFIG} names an OOD reference {name} that "
                                  "is not in the folder")
        stored = _read_json(path, "the OOD reference")
        try:
            values = dict(stored["ood_reference"])
            for key, dtype in dict(stored.get("dtypes") or {}).items():
                values[key] = torch.tensor(values[key], dtype=_DTYPES[dtype])
            reference = OodReference.from_dict(values)
        except (TypeError, ValueError, KeyError) as e:
            raise CheckpointError(path, f"its OOD reference cannot be read: {e}") from None
    return calibration, reference


def load_hub(path: str | os.PathLike) -> LoadedModel:
    """Load a hub folder (or its ``model.safetensors``) written by :func:`write_hub` (eval mode):
    the network of ``config.json``'s ``model_config`` holding the file's weights, its head, label
    schema, calibration and OOD reference; ``source``: the weights file.

    Raises:
        CheckpointError: naming the file: not a heartgpt hub folder, a config that is not JSON or
            not this format, weights that do not fit the config, a damaged trust state.
    """
    from safetensors.torch import load_file

    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if not is_hub_folder(folder):
        raise CheckpointError(folder, f"not a hub folder (it needs {HUB_CONFIG} and {HUB_WEIGHTS})")
    config = _read_json(folder / HUB_CONFIG, HUB_CONFIG)
    if config.get("format") != HUB_FORMAT:
        raise CheckpointError(folder / HUB_CONFIG, f"not a heartgpt hub config "
                              f"(format={config.get('format')!r}, expected {HUB_FORMAT!r})")
    weights_file = folder / HUB_WEIGHTS
    try:
        tensors = load_file(str(weights_file))
    except Exception as e:
        raise CheckpointError(weights_file, f"cannot read as safetensors: {e}") from e
    head_state = {k.removeprefix(TASK_HEAD_PREFIX): tensors.pop(k) for k in list(tensors)
                  if k.startswith(TASK_HEAD_PREFIX)}
    model = model_of(config.get("model_config"), tensors, weights_file)
    calibration, reference = _trust(folder, config)
    schema = config.get("label_schema")
    return LoadedModel(model, config.get("modality") or None, str(config.get("task", "pretrain")),
                       str(weights_file), bool(config.get("synthetic", False)),
                       head=config.get("head") or None,
                       hparams={} if schema is None else {"label_schema": schema},
                       head_state=head_state, calibration=calibration, ood_reference=reference)
