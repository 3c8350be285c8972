"""What every checkpoint file format shares: the loaded result, the error, safe reading, the
layout of our Lightning ``.ckpt`` files and the checks of a stored model config.

The readers of each format (:mod:`.released`, :mod:`.safetensors_file`, :mod:`.onnx_file`,
:mod:`.lightning_checkpoint`) build on this module only; :mod:`.checkpoints` picks among them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from heartgpt.errors import InputError
from heartgpt.heads.calibration import Calibration, OodReference
from heartgpt.model.gpt import GPT, GPTConfig

# The layout of our Lightning .ckpt files: a dict with the module's state dict and its
# hyper-parameters (plain Python values: `model_config`, `modality`, `task`, `head`, `lora` ...).
STATE_KEY = "state_dict"
HPARAMS_KEY = "hyper_parameters"
MODEL_PREFIX = "model."  # the LightningModules keep the GPT as self.model
COMPILED_PREFIX = "_orig_mod."  # torch.compile(model) wraps the keys so
TASK_HEAD_PREFIX = "task_head."  # a fine-tune's head outside the GPT (attention pooling, ...)
# The trust state (issue 29), beside state_dict and hyper_parameters: {"calibration": {...},
# "ood_reference": {...}} (heartgpt.heads.calibration), written by heartgpt.model.trust_file.
TRUST_KEY = "trust"

UNSAFE_LOAD_ENV = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"

# A stored config beyond these is refused before anything is allocated (the released model:
# vocab 101/102, block 500, n_embd 64, 8 heads, 8 layers).
CONFIG_LIMITS = {"vocab_size": 65_536, "block_size": 1_000_000, "n_embd": 65_536,
                 "n_head": 4_096, "n_layer": 1_024}


class CheckpointError(InputError):
    """A file is not a checkpoint this code can load; ``str()`` is ``"<file>: <problem>"``."""


@dataclass
class LoadedModel:
    """A model and what its file says about it."""

    # a GPT, or an OnnxGPT: an .onnx export (forward only), see heartgpt.model.onnx_file
    model: GPT | torch.nn.Module
    modality: str | None  # 'ecg' / 'ppg' where known
    task: str  # 'pretrain', or for released fine-tunes 'af' / 'beats' / 'binary'
    source: str  # path it came from
    synthetic: bool = False  # trained on the SYNTHETIC demo data (its numbers mean nothing real)
    head: dict[str, Any] | None = None  # the fine-tune's module.head (kind, outputs, pooling, ...)
    # the hyper-parameters of one of our .ckpt files ({} for other files)
    hparams: dict[str, Any] = field(default_factory=dict, repr=False)
    # tensors of the head outside the GPT (.ckpt task_head.*, prefix dropped)
    head_state: dict[str, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)
    # the temperature fitted on labelled windows (.ckpt files that hold one; None: raw only)
    calibration: Calibration | None = None
    # the training windows' pooled hidden states (None: OOD scores unavailable until
    # python -m heartgpt.calibrate stores one); see heartgpt.model.trust.ood_scores
    ood_reference: OodReference | None = field(default=None, repr=False, compare=False)


def warn_if_synthetic(loaded: LoadedModel, log: logging.Logger) -> None:
    """Log that ``loaded`` was trained on the SYNTHETIC demo data, if it was."""
    if loaded.synthetic:
        log.warning("%s was trained on SYNTHETIC demo data: what it predicts says nothing "
                    "about real recordings", loaded.source)


def require_torch(loaded: LoadedModel, use: str) -> GPT:
    """``loaded.model`` when it is a PyTorch :class:`GPT`; an ONNX export (forward only, no
    trainable weights) is a :class:`CheckpointError` saying that ``use`` needs the original."""
    if not isinstance(loaded.model, GPT):
        raise CheckpointError(loaded.source, f"is an ONNX export: {use} needs the PyTorch "
                              "checkpoint it was exported from")
    return loaded.model


def existing_file(path: str | os.PathLike) -> Path:
    """``path`` as a :class:`Path`; FileNotFoundError ``"<path>: no such checkpoint file"``
    when it is not a file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    return path


def load_weights_only(source: str | os.PathLike, data: Any, what: str) -> Any:
    """``torch.load(data, weights_only=True)`` onto the CPU: nothing but tensors and plain
    containers is unpickled, so a crafted file cannot run code. Every checkpoint read of
    heartgpt goes through here (Lightning's ``ckpt_path`` through
    :class:`heartgpt.training.checkpoint_io.SafeCheckpointIO`).

    Raises:
        CheckpointError: ``$TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` is set (it turns unpickling of
            arbitrary code back on for loaders that do not ask explicitly; heartgpt refuses to
            run with it); the file is empty, damaged or holds other objects ("cannot read as
            ``what``", with the first line of torch's reason and never its advice to retry
            with ``weights_only=False``).
    """
    if os.environ.get(UNSAFE_LOAD_ENV, "").strip().lower() not in ("", "0", "false"):
        raise CheckpointError(source, f"${UNSAFE_LOAD_ENV} is set: it lets checkpoint files run "
                              "code when they are read; heartgpt loads weights only, unset it")
    if isinstance(data, (str, os.PathLike)) and Path(data).is_file() \
            and Path(data).stat().st_size == 0:
        raise CheckpointError(source, "is empty (0 bytes): its save was interrupted")
    try:
        return torch.load(data, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and EOF errors of a damaged or foreign file
        text = str(e).strip()
        reason = next((line.strip() for line in text.splitlines()
                       if line.strip() and "weights_only" not in line), type(e).__name__)
        raise CheckpointError(source, f"cannot read as {what} ({type(e).__name__}: "
                              f"{reason[:200]})") from None


def checked_config(config: Any, weights: dict[str, torch.Tensor], path: Path) -> GPTConfig:
    """The :class:`GPTConfig` a file stores, once it is within :data:`CONFIG_LIMITS` and the
    shapes of its model (built on the meta device: no memory) are those of ``weights``."""
    if not isinstance(config, dict):
        raise CheckpointError(path, f"stored model config is not a mapping: {config!r:.80}")
    for key, limit in CONFIG_LIMITS.items():
        value = config.get(key)
        if value is not None and not (isinstance(value, int) and not isinstance(value, bool)
                                      and 1 <= value <= limit):
            raise CheckpointError(path, f"stored model config {key}={value!r:.40} is not an "
                                  f"integer in [1, {limit}]")
    try:
        cfg = GPTConfig.from_dict(config)
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in GPT(cfg).state_dict().items()}
    except (TypeError, ValueError) as e:
        raise CheckpointError(path, f"stored model config cannot be used: {e}") from None
    found = {k: tuple(v.shape) for k, v in weights.items()}
    if found != expected:
        missing = sorted(expected.keys() - found.keys())
        extra = sorted(found.keys() - expected.keys())
        shapes = [f"{k} {found[k]} vs {expected[k]}" for k in sorted(expected.keys() & found.keys())
                  if found[k] != expected[k]]
        parts = [f"{what}: {', '.join(items[:3])}{' ...' if len(items) > 3 else ''}"
                 for what, items in (("missing", missing), ("unexpected", extra),
                                     ("shape (file vs config)", shapes)) if items]
        raise CheckpointError(path, "weights do not match the stored config (" + "; ".join(parts)
                              + ")")
    return cfg


def model_of(config: Any, weights: dict[str, torch.Tensor], path: Path) -> GPT:
    """A :class:`GPT` of the stored ``config`` holding ``weights`` (all of them), in eval mode;
    the config is checked against the weights before the model is built."""
    model = GPT(checked_config(config, weights, path))
    model.load_state_dict(weights, strict=True)
    return model.eval()


def read_trust(checkpoint: dict[str, Any], path: str | os.PathLike
               ) -> tuple[Calibration | None, OodReference | None]:
    """The calibration and OOD reference a ``.ckpt`` dict stores under :data:`TRUST_KEY`
    (``(None, None)`` when it stores none); a damaged one is a :class:`CheckpointError`."""
    trust = checkpoint.get(TRUST_KEY)
    if not trust:
        return None, None
    if not isinstance(trust, dict):
        raise CheckpointError(path, f"its '{TRUST_KEY}' entry is not a mapping")
    try:
        calibration = (Calibration.from_dict(trust["calibration"])
                       if trust.get("calibration") else None)
        reference = (OodReference.from_dict(trust["ood_reference"])
                     if trust.get("ood_reference") else None)
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(path, f"its stored trust state cannot be read: {e}") from None
    return calibration, reference
