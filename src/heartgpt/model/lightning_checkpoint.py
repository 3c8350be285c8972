"""Our Lightning ``.ckpt`` files: read the GPT out of one, and the checkpoints of a LoRA run,
which hold the adapters (kilobytes) plus a reference to the base weights.

The LightningModules keep the network as ``self.model`` and save ``model_config`` (the
:class:`~heartgpt.model.GPTConfig` fields), ``modality`` and ``task`` as plain hyper-parameters,
so :func:`read_lightning` needs neither Hydra nor unpickling beyond tensors and containers.

A LoRA fine-tune (``module.lora`` set, started from ``module.pretrained``) changes only the
adapters and the parameters its freeze strategy leaves trainable; everything else is the base,
byte for byte. Its Lightning ``.ckpt`` keeps only those (:func:`strip_base`): the ``state_dict``
holds the parameters that require grad at save time, the buffers, and any frozen tensor that is
not exactly the base's; ``checkpoint["base_weights"] = {"path", "sha256", "keys"}`` names the
base file (``hparams.initial_weights``) and how many tensors were left out.

Reading one back (:func:`fill_from_base`: Lightning's ``ckpt_path`` resume and test,
``load_from_checkpoint``, :func:`read_lightning` for eval, predict, export and the tools) reads
the base file, refuses it unless it exists with the recorded sha256 (a
:class:`~heartgpt.model.checkpoint_format.CheckpointError` naming the checkpoint and the base:
other weights are never used silently), and puts the omitted tensors back into the state dict,
so that loading stays strict (a wrong key still fails). A LoRA run without a base file (from
scratch) keeps its full state dict, as every other run does.

The base file is read by a ``load_base`` function the caller passes
(:func:`heartgpt.model.checkpoints.load_model`): a base may be any file the loader reads.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from heartgpt.files import sha256_file
from heartgpt.heads.legacy import head_of
from heartgpt.model.checkpoint_format import (
    COMPILED_PREFIX,
    HPARAMS_KEY,
    MODEL_PREFIX,
    STATE_KEY,
    TASK_HEAD_PREFIX,
    CheckpointError,
    LoadedModel,
    existing_file,
    load_weights_only,
    model_of,
    read_trust,
    require_torch,
)
from heartgpt.model.lora import merge_lora_weights

BASE_KEY = "base_weights"  # in the checkpoint dict: {"path", "sha256", "keys"}
LoadBase = Callable[[Path], LoadedModel]  # reads a base file: heartgpt.model.checkpoints.load_model


def read_lightning(path: str | os.PathLike, load_base: LoadBase) -> LoadedModel:
    """Load the GPT out of one of our Lightning ``.ckpt`` files (eval mode), with its
    hyper-parameters and the tensors of its task head; a LoRA run's adapters are merged into
    their layers (:func:`heartgpt.model.lora.merge_lora_weights`). A LoRA checkpoint that holds
    the adapters only reads the rest from the base file it names, with ``load_base``, which must
    be there with the recorded sha256 (:func:`fill_from_base`)."""
    path = existing_file(path)
    ckpt = load_weights_only(path, path, "a Lightning checkpoint")
    hparams = ckpt.get(HPARAMS_KEY) if isinstance(ckpt, dict) else None
    if not isinstance(hparams, dict) or "model_config" not in hparams or STATE_KEY not in ckpt:
        raise CheckpointError(path, "not a heartgpt Lightning checkpoint "
                              "(no 'state_dict' or no 'model_config' hyper-parameter)")
    if ckpt.get(BASE_KEY):  # a LoRA run's adapters: the rest from its (verified) base
        fill_from_base(ckpt, load_base, source=path)
    state = ckpt[STATE_KEY]
    weights = {gpt_key: v for k, v in state.items() if (gpt_key := _gpt_key(k)) is not None}
    if hparams.get("lora"):  # a LoRA run: its adapters folded in, a plain model of the same outputs
        weights = merge_lora_weights(weights, **dict(hparams["lora"]))
    model = model_of(hparams["model_config"], weights, path)
    head_state = {k.removeprefix(TASK_HEAD_PREFIX): v for k, v in state.items()
                  if k.startswith(TASK_HEAD_PREFIX)}
    calibration, reference = read_trust(ckpt, path)
    return LoadedModel(model, hparams.get("modality"), hparams.get("task", "pretrain"), str(path),
                       bool(hparams.get("synthetic_data", False)), head=head_of(hparams),
                       hparams=dict(hparams), head_state=head_state, calibration=calibration,
                       ood_reference=reference)


def base_reference(hparams: Mapping[str, Any]) -> dict[str, str] | None:
    """``{"path", "sha256"}`` of the file a LoRA run started from (``hparams.initial_weights``),
    or None: not a LoRA run, or one from scratch (its checkpoints keep every tensor)."""
    if not hparams.get("lora"):
        return None
    ref = hparams.get("initial_weights")
    if not isinstance(ref, Mapping) or not ref.get("path") or not ref.get("sha256"):
        return None
    return {"path": str(ref["path"]), "sha256": str(ref["sha256"])}


def _gpt_key(key: str) -> str | None:
    """The :class:`~heartgpt.model.GPT` state-dict key of a LightningModule key (None: not the
    model's)."""
    if not key.startswith(MODEL_PREFIX):
        return None
    return key.removeprefix(MODEL_PREFIX).removeprefix(COMPILED_PREFIX)


def read_base(reference: Mapping[str, Any], load_base: LoadBase,
              checkpoint: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """The weights (a plain GPT state dict, on the CPU) of the base file ``reference`` names,
    read by ``load_base``.

    Raises:
        CheckpointError: naming ``checkpoint`` (the LoRA checkpoint, "a LoRA checkpoint" when
            unknown) and the base file, which is missing or whose sha256 is not the recorded one.
    """
    source = str(checkpoint) if checkpoint is not None else "a LoRA checkpoint"
    path, want = Path(str(reference["path"])), str(reference["sha256"])
    why = ("it holds the LoRA adapters and trained layers only, the rest is read from that file; "
           "put the exact file back at that path")
    if not path.is_file():
        raise CheckpointError(source, f"its base weights {path} are missing (sha256 {want}); "
                              f"{why}")
    have = sha256_file(path)
    if have != want:
        raise CheckpointError(source, f"its base weights {path} have changed: sha256 {have}, "
                              f"the checkpoint was trained on sha256 {want}; {why}")
    model = require_torch(load_base(path), "the base of a LoRA checkpoint")
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def strip_base(checkpoint: dict[str, Any], module: torch.nn.Module, reference: Mapping[str, Any],
               base: Mapping[str, torch.Tensor]) -> int:
    """Drop from ``checkpoint["state_dict"]`` (in place) every frozen parameter of ``module``
    that equals the base's tensor (``base``: :func:`read_base` of ``reference``) and record
    ``checkpoint["base_weights"]``; returns how many were dropped (0: nothing changes)."""
    state = checkpoint[STATE_KEY]
    frozen = {name for name, p in module.named_parameters(remove_duplicate=False)
              if not p.requires_grad}
    omitted = []
    for key in frozen & state.keys():
        gpt_key, tensor = _gpt_key(key), state[key]
        theirs = base.get(gpt_key) if gpt_key is not None else None
        if (theirs is not None and theirs.shape == tensor.shape
                and torch.equal(theirs.to(tensor.dtype), tensor.detach().cpu())):
            omitted.append(key)  # restored exactly by fill_from_base
    if omitted:
        for key in omitted:
            del state[key]
        checkpoint[BASE_KEY] = {"path": str(reference["path"]),
                                "sha256": str(reference["sha256"]), "keys": len(omitted)}
    return len(omitted)


def fill_from_base(checkpoint: dict[str, Any], load_base: LoadBase,
                   expected: Iterable[str] | None = None,
                   source: str | os.PathLike | None = None) -> int:
    """Put the tensors a LoRA checkpoint left out back into ``checkpoint["state_dict"]`` (in
    place), from its verified base file (:func:`read_base` with ``load_base``); returns how many
    (0: it names no base and is left as it is).

    ``expected``: the state-dict keys of the module it loads into (None: every base tensor the
    checkpoint lacks). Exactly ``checkpoint["base_weights"]["keys"]`` tensors must be missing,
    each one a tensor of the base of the same shape, or this is a CheckpointError naming
    ``source``.
    """
    reference = checkpoint.get(BASE_KEY)
    if not reference:
        return 0
    name = str(source) if source is not None else "a LoRA checkpoint"
    base = read_base(reference, load_base, source)
    state = checkpoint[STATE_KEY]
    if expected is None:
        expected = [MODEL_PREFIX + k for k in base]
    missing = [k for k in expected if k not in state]
    if len(missing) != int(reference.get("keys", -1)):
        raise CheckpointError(name, f"left {reference.get('keys')} tensors to its base weights "
                              f"{reference['path']}, but {len(missing)} are missing here (e.g. "
                              f"{', '.join(missing[:3]) or 'none'}): a model of another shape "
                              "or LoRA setting?")
    for key in missing:
        gpt_key = _gpt_key(key)
        theirs = base.get(gpt_key) if gpt_key is not None else None
        if theirs is None:
            raise CheckpointError(name, f"{key} is neither in the checkpoint nor in its base "
                                  f"weights {reference['path']}")
        state[key] = theirs
    return len(missing)
