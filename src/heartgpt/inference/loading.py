"""Loading a model for inference: the checkpoint checked against the tool and the recording.

:func:`load_tool_model` loads anything :func:`heartgpt.model.checkpoints.load_model` loads and
checks that it is the kind of model the caller needs (a pre-trained language model, a 1-output
fine-tune) and that its modality agrees with the user's; every problem is an
:class:`~heartgpt.errors.InputError` naming the checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import numpy as np
import torch

from heartgpt.data.tokenizer import LEVELS, Modality, get_modality
from heartgpt.errors import InputError
from heartgpt.heads.applied import AppliedHead
from heartgpt.heads.registry import misread_by_tools
from heartgpt.model import GPT
from heartgpt.model.checkpoint_format import LoadedModel
from heartgpt.model.checkpoints import head_applied, load_model

M = TypeVar("M", bound=torch.nn.Module)


def resolve_modality(loaded: LoadedModel, stated: str | None) -> Modality:
    """The modality the tool works in: the checkpoint's, which ``stated`` must agree with."""
    if stated is not None:
        try:
            mod = get_modality(stated)
        except ValueError as e:
            raise InputError(loaded.source, str(e)) from None
        if loaded.modality is not None and loaded.modality != mod.name:
            raise InputError(loaded.source, f"checkpoint is for {loaded.modality.upper()} but "
                                           f"--modality says {mod.name.upper()}")
    elif loaded.modality is not None:
        mod = get_modality(loaded.modality)
    else:
        raise InputError(loaded.source, "checkpoint does not say its modality; pass --modality "
                                       "ecg or ppg")
    if loaded.model.config.vocab_size <= LEVELS:
        raise InputError(loaded.source, f"vocab size {loaded.model.config.vocab_size} cannot hold "
                                       f"tokens 0..{LEVELS}")
    return mod


def load_tool_model(
    path: str | os.PathLike,
    need: str,
    modality: str | None = None,
    refuse_task: str | None = None,
    device: str = "cpu",
    loaded: LoadedModel | None = None,
) -> tuple[LoadedModel, Modality]:
    """Load a checkpoint for a tool and check it fits.

    Args:
        path: anything :func:`heartgpt.model.checkpoints.load_model` loads.
        need: ``"lm"`` (a pre-trained next-token model), ``"binary"`` (a 1-output fine-tune),
            ``"head"`` (a fine-tune whose head is known: ``predict mode=head``) or ``"any"``.
        modality: the user's statement ('ecg'/'ppg'); must agree with the checkpoint.
        refuse_task: a fine-tune task this tool cannot use: 'beats' for the tools reading one
            probability per window (AF screening), 'af' for those reading one per position
            (beat detection). A 1-output checkpoint whose head is known (ours, exports, the
            released ones) must also be read as it was trained: a binary ``classify`` head (one
            probability per window, any pooling: :func:`window_probability_model`), or a binary
            ``tag`` head at every position (never a regression).
        device: where to put the model.
        loaded: ``path`` already loaded (it is not read again).
    """
    if need not in ("lm", "binary", "head", "any"):
        raise ValueError(f"need must be 'lm', 'binary', 'head' or 'any', got {need!r}")
    loaded = load_model(path) if loaded is None else loaded
    out = loaded.model.config.out_features
    if need == "lm" and out is not None:
        raise InputError(path, f"is a fine-tuned model ({out} output, task {loaded.task!r}); "
                              "this tool needs a pre-trained language model")
    if need == "binary" and out != 1:
        kind = "a pre-trained language model" if out is None else f"a {out}-output model"
        raise InputError(path, f"is {kind}; this tool needs a fine-tuned 1-output model")
    if need == "head" and (out is None or loaded.head is None):
        kind = ("a pre-trained language model" if out is None
                else "a fine-tune that does not say its head (a released model: mode=af or beats)")
        raise InputError(path, f"is {kind}; mode=head needs one of our fine-tuned .ckpt files")
    if refuse_task is not None and loaded.task == refuse_task:
        raise InputError(path, f"is fine-tuned for task {refuse_task!r}, not for this tool")
    if need == "binary" and loaded.head is not None:
        why = misread_by_tools(loaded.head, per_position=refuse_task == "af")
        if why:
            reads = ("tag head at every position" if refuse_task == "af"
                     else "classify head (one probability per window)")
            raise InputError(path, f"{why}; this tool reads a binary {reads}: python -m "
                             f"heartgpt.predict checkpoint={path} inputs=<recordings> applies "
                             "any head")
    mod = resolve_modality(loaded, modality)
    loaded.model.to(device).eval()
    return loaded, mod


def window_probability_model(loaded: LoadedModel) -> GPT | AppliedHead:
    """The network the AF tools read one probability per window from: the GPT itself when its
    head is read at the last position (the released models, last-pooled fine-tunes), else the
    fine-tune with its head applied (mean or attention pooling, an ONNX export that applies its
    head), whose second column is the probability
    (:func:`heartgpt.inference.af_screening.af_probabilities` reads either)."""
    head, inside = loaded.head, bool(getattr(loaded.model, "applies_head", False))
    if head is None or (head.get("pooling", "last") == "last" and not inside):
        return loaded.model
    return head_applied(loaded, loaded.model if inside else None)


@contextmanager
def eval_mode(model: M) -> Iterator[M]:
    """Eval mode and no gradients for the block; restores the previous mode (for callbacks)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def model_device(model: torch.nn.Module) -> torch.device:
    """Where ``model``'s inputs go: its parameters' device; for a module without parameters
    (an :class:`~heartgpt.model.onnx_file.OnnxGPT`) its declared ``device``, else the CPU."""
    param = next(model.parameters(), None)
    if param is not None:
        return param.device
    return torch.device(getattr(model, "device", "cpu"))


def batched(model: torch.nn.Module, tokens: np.ndarray, batch_size: int,
            fn: Callable[[torch.Tensor], torch.Tensor] | None = None) -> np.ndarray:
    """``fn`` (default: ``model`` itself) over ``tokens`` (U, T) in batches on the model's
    device, in eval mode without gradients, concatenated on the CPU."""
    fn = fn or model
    device = model_device(model)
    out = []
    with eval_mode(model):
        for i in range(0, len(tokens), batch_size):
            x = torch.as_tensor(tokens[i : i + batch_size], dtype=torch.long, device=device)
            out.append(fn(x).float().cpu().numpy())
    return np.concatenate(out)
