"""Load any HeartGPT weights file: :func:`load_model` picks the reader of its format.

The formats (each in its own module, over :mod:`.checkpoint_format`): the released ``.zip`` /
``.pth`` (:mod:`.released`), our Lightning ``.ckpt`` (:mod:`.lightning_checkpoint`), our
``.safetensors`` export (:mod:`.safetensors_file`), an ``.onnx`` export (:mod:`.onnx_file`) and a
hub folder (:mod:`.hub_folder`: ``config.json`` + ``model.safetensors``).
Also where a bare file name is looked for, and whether a loaded model can start another.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from heartgpt.heads.applied import AppliedHead, applied_head
from heartgpt.model.checkpoint_format import CheckpointError, LoadedModel, require_torch
from heartgpt.model.gpt import GPT, GPTConfig
from heartgpt.model.hub_folder import HUB_WEIGHTS, is_hub_folder, is_hub_weights, load_hub
from heartgpt.model.lightning_checkpoint import read_lightning
from heartgpt.model.onnx_file import load_onnx
from heartgpt.model.released import load_released
from heartgpt.model.safetensors_file import load_safetensors

WEIGHTS_ENV = "HEARTGPT_WEIGHTS"  # folder of the released files, for bare names like ECGPT_560k_iters.zip


def load_lightning(path: str | os.PathLike) -> LoadedModel:
    """Load the GPT out of one of our Lightning ``.ckpt`` files (eval mode; see
    :func:`heartgpt.model.lightning_checkpoint.read_lightning`); the base file of a LoRA
    checkpoint that holds the adapters only is read by :func:`load_model`."""
    return read_lightning(path, load_model)


def weights_dirs(weights_dir: str | os.PathLike | None = None) -> list[Path]:
    """Where a bare checkpoint name is looked for, in order: ``weights_dir`` (the config's
    ``paths.weights_dir``), then ``$HEARTGPT_WEIGHTS``, then ``./weights``."""
    found = [weights_dir, os.environ.get(WEIGHTS_ENV), "weights"]
    dirs: list[Path] = []
    for d in found:
        if d and Path(d).expanduser().resolve() not in dirs:
            dirs.append(Path(d).expanduser().resolve())
    return dirs


def find_weights(path: str | os.PathLike, weights_dir: str | os.PathLike | None = None) -> Path:
    """The checkpoint file ``path`` names: as given when it exists; a bare file name
    (``PPGPT_500k_iters.zip``) is also looked up in :func:`weights_dirs`. A hub folder
    (:func:`heartgpt.model.hub_folder.is_hub_folder`) stands for its ``model.safetensors``, the
    file whose sha256 pins it (:func:`load_model` of that file reads the whole folder). Raises
    FileNotFoundError saying every place it looked (a folder that is no hub folder: what it
    lacks)."""
    given = Path(path).expanduser()
    if given.is_file():
        return given
    if is_hub_folder(given):
        return given / HUB_WEIGHTS
    if given.is_dir():
        raise FileNotFoundError(f"{path}: a folder, not a checkpoint file or a hub folder (one "
                                f"holds config.json and {HUB_WEIGHTS}: python -m heartgpt.export "
                                "format=hub)")
    looked = [given.resolve()]
    if len(given.parts) == 1:
        for d in weights_dirs(weights_dir):
            if (d / given).is_file():
                return d / given
            if is_hub_folder(d / given):
                return d / given / HUB_WEIGHTS
            looked.append(d / given)
    where = ", ".join(str(p) for p in looked)
    raise FileNotFoundError(
        f"{path}: no such checkpoint file (looked in: {where}; set paths.weights_dir or "
        f"${WEIGHTS_ENV} to the folder of the released files)")


def load_model(path: str | os.PathLike, weights_dir: str | os.PathLike | None = None) -> LoadedModel:
    """Load any HeartGPT weights file.

    A released ``.zip``/``.pth``, one of our Lightning ``.ckpt`` files, a ``.safetensors``
    export, an ``.onnx`` export (an :class:`~heartgpt.model.onnx_file.OnnxGPT` run by ONNX
    Runtime, which must be installed: ``pip install 'heartgpt[onnx]'``) or a hub folder (or its
    ``model.safetensors``: :func:`heartgpt.model.hub_folder.load_hub`, with its calibration and
    OOD reference); the kind is told by the suffix (``.ckpt``, ``.safetensors``, ``.onnx``,
    anything else released). A bare name is looked up as :func:`find_weights` says.
    """
    path = find_weights(path, weights_dir)
    if is_hub_weights(path):
        return load_hub(path)
    if path.suffix == ".onnx":
        return load_onnx(path)
    if path.suffix == ".safetensors":
        return load_safetensors(path)
    if path.suffix == ".ckpt":
        return load_lightning(path)
    return load_released(path)


def check_vocab(loaded: LoadedModel, vocab_size: int, what: str = "the data") -> None:
    """Raise a clear error when a checkpoint's vocabulary does not match ``vocab_size``."""
    have = loaded.model.config.vocab_size
    if have != vocab_size:
        raise CheckpointError(
            loaded.source, f"checkpoint vocab size {have} "
            f"({loaded.modality or 'unknown modality'}) does not match {what} "
            f"(vocab size {vocab_size})"
        )


# Fields that must agree for weights to carry over (dropout may differ; the head may not).
_SHAPE_FIELDS = ("vocab_size", "block_size", "n_embd", "n_head", "n_layer")


FINETUNED_TASKS = ("af", "beats")


def check_starting_point(loaded: LoadedModel, ours: GPTConfig, modality: str | None = None,
                         task: str | None = None) -> None:
    """Raise :class:`CheckpointError` unless ``loaded`` can start a model of config ``ours`` for
    ``modality`` and ``task`` (see :func:`init_from_pretrained`): ``train`` asks before
    anything starts, ``init_from_pretrained`` again when it copies the weights."""
    path = loaded.source
    require_torch(loaded, "initialising a model")
    theirs = loaded.model.config
    if modality is not None and loaded.modality is not None and loaded.modality != modality:
        raise CheckpointError(path, f"a {loaded.modality.upper()} checkpoint cannot start a "
                              f"{modality.upper()} model")
    if task is not None and loaded.task in FINETUNED_TASKS and loaded.task != task:
        raise CheckpointError(path, f"is fine-tuned for {loaded.task}; it cannot start task "
                              f"{task}: start from the pre-trained model (e.g. "
                              f"{(loaded.modality or 'ppg').upper()}PT released weights) or a "
                              f"{task} checkpoint")
    check_vocab(loaded, ours.vocab_size, what=f"this {modality or ''} model".replace("  ", " "))
    diff = {f: (getattr(theirs, f), getattr(ours, f)) for f in _SHAPE_FIELDS
            if getattr(theirs, f) != getattr(ours, f)}
    if abs(theirs.scale - ours.scale) > 1e-12:
        diff["attention scale"] = (theirs.scale, ours.scale)
    if diff:
        detail = ", ".join(f"{k}: file {a} vs model {b}" for k, (a, b) in diff.items())
        raise CheckpointError(path, f"does not fit this model ({detail})")


def init_from_pretrained(model: GPT, path: str | os.PathLike, modality: str | None = None,
                         task: str | None = None) -> LoadedModel:
    """Copy the weights of ``path`` (anything :func:`load_model` reads) into ``model``.

    The trunk (embeddings, blocks, final norm) must match in shape and attention scale; the head
    is copied when it has the same shape, and otherwise left as initialised -- a language-model
    checkpoint starting a 1-unit fine-tuning head. A vocab, modality or shape mismatch raises
    :class:`CheckpointError` naming the file, before any training; so does a model fine-tuned
    for another task (``af`` / ``beats``) starting ``task``: its last block and head were
    trained to read windows another way (a per-window AF head is not a per-token beat head).
    """
    loaded = load_model(path)
    check_starting_point(loaded, model.config, modality, task)
    ours, theirs = model.config, loaded.model.config
    weights = loaded.model.state_dict()
    if theirs.n_out != ours.n_out:
        weights = {k: v for k, v in weights.items() if not k.startswith("head.")}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    # a new head, and LoRA adapters (heartgpt.model.lora) the starting point does not have
    assert not unexpected and all(k.startswith("head.") or ".lora_" in k for k in missing), (
        missing, unexpected)
    return loaded


def head_applied(loaded: LoadedModel, model: nn.Module | None = None) -> AppliedHead:
    """The fine-tune ``loaded`` with its head applied (:func:`heartgpt.heads.applied.applied_head`:
    tokens -> the head's outputs in the labels' terms). ``model``: the network it reads (default
    ``loaded``'s PyTorch GPT; an ONNX export that already applies its head is passed as is).

    Raises:
        CheckpointError: naming ``loaded``'s file: it does not say its head, or the head cannot
            be rebuilt (its tensors or its training statistics are missing).
    """
    if not loaded.head:
        raise CheckpointError(loaded.source, "does not say its head")
    net = require_torch(loaded, "applying its head") if model is None else model
    try:
        return applied_head(net, loaded.head, loaded.head_state, loaded.source,
                            loaded.hparams.get("label_schema"))
    except ValueError as e:
        raise CheckpointError(loaded.source, str(e).removeprefix(f"{loaded.source}: ")) from None
