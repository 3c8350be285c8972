"""The checkpoints of a LoRA run: the adapters (kilobytes) plus a reference to the base weights.

A LoRA fine-tune (``module.lora`` set, started from ``module.pretrained``) changes only the
adapters and the parameters its freeze strategy leaves trainable; everything else is the base,
byte for byte. Its Lightning ``.ckpt`` keeps only those (:func:`strip_base`): the ``state_dict``
holds the parameters that require grad at save time, the buffers, and any frozen tensor that is
not exactly the base's; ``checkpoint["base_weights"] = {"path", "sha256", "keys"}`` names the
base file (``hparams.initial_weights``) and how many tensors were left out.

Reading one back (:func:`fill_from_base`: Lightning's ``ckpt_path`` resume and test,
``load_from_checkpoint``, :func:`heartgpt.model.checkpoints.load_lightning` for eval, predict,
export and the tools) reads the base file, refuses it unless it exists with the recorded sha256
(a :class:`~heartgpt.model.checkpoints.CheckpointError` naming the checkpoint and the base:
other weights are never used silently), and puts the omitted tensors back into the state dict,
so that loading stays strict (a wrong key still fails). A LoRA run without a base file (from
scratch) keeps its full state dict, as every other run does.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from heartgpt.files import sha256_file
from heartgpt.model.checkpoints import CheckpointError, load_model, require_torch

BASE_KEY = "base_weights"  # in the checkpoint dict: {"path", "sha256", "keys"}
MODEL_PREFIX = "model."  # the LightningModules keep the GPT as self.model
COMPILED_PREFIX = "_orig_mod."  # torch.compile(model) wraps the keys so


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


def read_base(reference: Mapping[str, Any], checkpoint: str | os.PathLike | None = None
              ) -> dict[str, torch.Tensor]:
    """The weights (a plain GPT state dict, on the CPU) of the base file ``reference`` names.

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
    model = require_torch(load_model(path), "the base of a LoRA checkpoint")
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def strip_base(checkpoint: dict[str, Any], module: torch.nn.Module, reference: Mapping[str, Any],
               base: Mapping[str, torch.Tensor]) -> int:
    """Drop from ``checkpoint["state_dict"]`` (in place) every frozen parameter of ``module``
    that equals the base's tensor (``base``: :func:`read_base` of ``reference``) and record
    ``checkpoint["base_weights"]``; returns how many were dropped (0: nothing changes)."""
    state = checkpoint["state_dict"]
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


def fill_from_base(checkpoint: dict[str, Any], expected: Iterable[str] | None = None,
                   source: str | os.PathLike | None = None) -> int:
    """Put the tensors a LoRA checkpoint left out back into ``checkpoint["state_dict"]`` (in
    place), from its verified base file (:func:`read_base`); returns how many (0: it names no
    base and is left as it is).

    ``expected``: the state-dict keys of the module it loads into (None: every base tensor the
    checkpoint lacks). Exactly ``checkpoint["base_weights"]["keys"]`` tensors must be missing,
    each one a tensor of the base of the same shape, or this is a CheckpointError naming
    ``source``.
    """
    reference = checkpoint.get(BASE_KEY)
    if not reference:
        return 0
    name = str(source) if source is not None else "a LoRA checkpoint"
    base = read_base(reference, source)
    state = checkpoint["state_dict"]
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
