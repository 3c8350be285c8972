"""Deployment exports of a HeartGPT model: ONNX (run by ONNX Runtime) and ``torch.export`` (.pt2).

Both take a :class:`~heartgpt.model.checkpoint_format.LoadedModel` (anything ``load_model`` reads) and
trace ``GPT.forward``: int64 tokens ``tokens`` (batch, time) -> float32 ``logits``
(batch, time, n_out), with the batch size and the sequence length (1..block_size) dynamic.
The outputs are the head's raw logits; a user applies ``sigmoid`` (1-output fine-tunes: AF at
the last position, beats at every one) or ``softmax`` (language models) as the PyTorch tools do.

- :func:`export_onnx` writes an ``.onnx`` file whose ``metadata_props`` carry the
  :class:`~heartgpt.model.GPTConfig` (JSON), modality, task, the source checkpoint's file name
  and sha256 and the heartgpt version (keys ``heartgpt.*``).
  :func:`heartgpt.model.onnx_file.load_onnx` (and so :func:`heartgpt.model.checkpoints.load_model`
  for a ``.onnx`` file) reads it back as an :class:`~heartgpt.model.onnx_file.OnnxGPT`, a
  drop-in for :class:`~heartgpt.model.GPT` wherever the tools call ``model(x)`` (AF screening,
  beat detection, exact-mode generation).
- :func:`export_program` writes a ``torch.export`` program (``.pt2``) with the same metadata
  as the JSON extra file ``heartgpt.json``; :func:`load_program` reads it back.
- ``format=safetensors`` of ``python -m heartgpt.export`` writes the weights of a plain
  :class:`~heartgpt.model.GPT` (:func:`heartgpt.model.safetensors_file.save_safetensors`): a LoRA
  run's ``.ckpt`` comes out merged (adapters folded into their layers, no ``lora`` keys), the
  adapted model's outputs from the released layout.
- A fine-tune whose head keeps tensors outside the GPT (``loaded.head_state``: attention
  pooling's scorer, a regression's target mean and std) is exported with its head: the ONNX
  graph is the :class:`~heartgpt.heads.applied.AppliedHead` (tokens -> ``outputs``, the head's
  outputs in the labels' terms: the pooling inside, the standardisation undone inside), its
  metadata ``outputs=head`` plus ``head`` and ``label_schema``; a ``.safetensors`` stores the
  head's tensors and ``label_schema`` beside the GPT's. ``torch_export`` cannot hold them.
- ``format=hub`` writes a folder for a model hub (:mod:`heartgpt.model.hub_folder`:
  ``model.safetensors``, ``config.json``, the trust state, a ``README.md`` model card), read
  back by ``load_model(<folder>)`` with outputs identical to the source's.
- :func:`check_export` runs an exported file on deterministic token windows and compares it with
  the PyTorch model; ``python -m heartgpt.export`` refuses a file that fails it.

Tolerances of :func:`check_export`. ONNX Runtime computes in float32 too, but with other kernels
and another summation order (fused LayerNorm, MatMul, softmax), so the logits of the released
base models differ from PyTorch's by about 1-4e-5 absolute, with logits up to about 30; PyTorch's
own float32 logits differ from a float64 computation by about 4e-5, so that is float32 rounding,
not an export error. What a user consumes are probabilities, and those must agree to
:data:`PROB_ATOL` (1e-5, absolute); the logits are held to a relative tolerance,
``LOGIT_RTOL * max|logit| + LOGIT_ATOL`` (1e-5 each). A ``torch.export`` program runs PyTorch's
own kernels and agrees to float32 round-off (exactly, in practice).

``onnx``, ``onnxruntime`` and ``onnxscript`` are optional (``pip install 'heartgpt[onnx]'``) and
imported only when an ONNX file is written or read.
"""

from __future__ import annotations

import io
import json
import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.nn import functional as F

from heartgpt import __version__
from heartgpt.data.tokenizer import LEVELS
from heartgpt.files import atomic_path, sha256_file
from heartgpt.heads.applied import AppliedHead
from heartgpt.model.checkpoint_format import CheckpointError, LoadedModel, require_torch
from heartgpt.model.checkpoints import head_applied
from heartgpt.model.gpt import GPT, GPTConfig
from heartgpt.model.hub_folder import load_hub
from heartgpt.model.onnx_file import (
    EXPORT_FORMAT,
    HEAD_OUTPUT_NAME,
    HEAD_OUTPUTS,
    INPUT_NAME,
    ONNX_INSTALL_HINT,
    ONNX_PREFIX,
    OUTPUT_NAME,
    OUTPUTS_KEY,
    exported_config,
    load_onnx,
)
from heartgpt.model.safetensors_file import load_safetensors

PROGRAM_METADATA = "heartgpt.json"  # the extra file of a .pt2 holding the same metadata
# export format -> file suffix; safetensors: the plain weights (a LoRA run's adapters merged);
# hub: a folder (no suffix) of model.safetensors, config.json and a model card
# (heartgpt.model.hub_folder)
FORMATS = {"onnx": ".onnx", "torch_export": ".pt2", "safetensors": ".safetensors", "hub": ""}

PROB_ATOL = 1e-5  # probabilities (sigmoid / softmax) must agree with PyTorch's to this
LOGIT_RTOL = 1e-5  # logits: |diff| <= LOGIT_RTOL * max|logit| + LOGIT_ATOL (module docstring)
LOGIT_ATOL = 1e-5


# --------------------------------------------------------------------------------- metadata


def export_metadata(loaded: LoadedModel) -> dict[str, str]:
    """What an exported file says about itself: format, config (JSON), modality, task, the
    fine-tune's head (JSON, how its outputs are read; absent when unknown), source file name and
    sha256 (empty when the source is not a file), heartgpt version."""
    source = Path(loaded.source)
    head = {"head": json.dumps(loaded.head, sort_keys=True)} if loaded.head else {}
    return {**head,
        "format": EXPORT_FORMAT,
        "config": json.dumps(loaded.model.config.to_dict()),
        "modality": loaded.modality or "",
        "task": loaded.task,
        "synthetic": "true" if loaded.synthetic else "false",
        "source": source.name,
        "source_sha256": sha256_file(source) if source.is_file() else "",
        "version": __version__,
    }


# --------------------------------------------------------------------------------- exporting


def _dynamic_shapes(config: GPTConfig) -> tuple[dict[int, Any], ...]:
    """Batch 1.. and sequence length 1..block_size, for the one argument of ``forward``."""
    return ({0: torch.export.Dim("batch", min=1),
             1: torch.export.Dim("time", min=1, max=config.block_size)},)


def _example_tokens(model: nn.Module) -> torch.Tensor:
    """(2, block_size) tokens to trace with (batch 2: a size-1 dim would be specialised)."""
    config = model.config
    tokens = torch.arange(2 * config.block_size).reshape(2, config.block_size)
    return (tokens % min(config.vocab_size, LEVELS + 1)).to(_device_of(model))


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _torch_model(loaded: LoadedModel) -> GPT:
    """The :class:`GPT` of ``loaded`` in eval mode; an :class:`~heartgpt.model.onnx_file.OnnxGPT` cannot be
    re-exported."""
    return require_torch(loaded, "exporting").eval()


# Loggers of the exporters that report every step at INFO or skipped torchvision ops at WARNING.
_CHATTY_LOGGERS = ("torch.onnx", "torch.export", "onnxscript", "onnx_ir")


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporters' known chatter (their optimisation passes, the torchvision ops
    they skip, pytree deprecation warnings); errors still show."""
    loggers = [logging.getLogger(name) for name in _CHATTY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def require_onnx_exporter() -> None:
    """Raise ImportError naming what to install when ONNX cannot be written here."""
    import importlib.util

    missing = [m for m in ("onnx", "onnxscript", "onnxruntime")
               if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"ONNX export needs {', '.join(missing)}: {ONNX_INSTALL_HINT}")


def applied_model(loaded: LoadedModel) -> AppliedHead:
    """The fine-tune ``loaded`` with its head applied, in eval mode, for exporting
    (:func:`heartgpt.model.checkpoints.head_applied`)."""
    return head_applied(loaded, _torch_model(loaded))


def export_onnx(loaded: LoadedModel, path: str | os.PathLike, opset: int | None = None) -> Path:
    """Export ``loaded.model`` to an ONNX file at ``path`` (written atomically); returns ``path``.

    Input ``tokens`` int64 (batch, time), output ``logits`` float32 (batch, time, n_out); batch
    and time (up to ``block_size``) are dynamic. ``opset``: the ONNX opset (None: the
    exporter's default). The metadata of :func:`export_metadata` is stored in the model's
    ``metadata_props`` under ``heartgpt.<key>``. A head with tensors outside the GPT
    (``loaded.head_state``) is exported with it (:func:`applied_model`): output ``outputs``
    (the head's, in the labels' terms), metadata ``outputs=head`` and ``label_schema``.
    """
    model = _torch_model(loaded)
    require_onnx_exporter()
    path = Path(path)
    traced: nn.Module = applied_model(loaded) if loaded.head_state else model
    extra = {OUTPUTS_KEY: HEAD_OUTPUTS} if loaded.head_state else {}
    if loaded.head_state and loaded.hparams.get("label_schema"):
        extra["label_schema"] = json.dumps(loaded.hparams["label_schema"], sort_keys=True)
    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(
            traced, (_example_tokens(model),), dynamo=True, input_names=[INPUT_NAME],
            output_names=[HEAD_OUTPUT_NAME if loaded.head_state else OUTPUT_NAME],
            dynamic_shapes=_dynamic_shapes(model.config), opset_version=opset, verbose=False,
        )
    for key, value in {**export_metadata(loaded), **extra}.items():
        program.model.metadata_props[ONNX_PREFIX + key] = value
    with atomic_path(path) as tmp:
        program.save(tmp, external_data=False)
    return path


def export_program(loaded: LoadedModel, path: str | os.PathLike) -> Path:
    """Export ``loaded.model`` with ``torch.export`` to a ``.pt2`` at ``path`` (atomically).

    Same signature and dynamic shapes as :func:`export_onnx`; the metadata is the extra file
    ``heartgpt.json``. :func:`load_program` reads it back.
    """
    model = _torch_model(loaded)
    path = Path(path)
    with _quiet_exporter(), torch.no_grad():
        program = torch.export.export(model, (_example_tokens(model),),
                                      dynamic_shapes=_dynamic_shapes(model.config))
    buffer = io.BytesIO()  # saved to memory first: torch.export wants a name ending in .pt2
    torch.export.save(program, buffer,
                      extra_files={PROGRAM_METADATA: json.dumps(export_metadata(loaded))})
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return path


def load_program(path: str | os.PathLike) -> tuple[torch.export.ExportedProgram, dict[str, str]]:
    """A ``.pt2`` of :func:`export_program` and its metadata; call ``program.module()(tokens)``."""
    extra = {PROGRAM_METADATA: ""}
    try:
        program = torch.export.load(path, extra_files=extra)
    except Exception as e:
        raise CheckpointError(path, f"cannot read as a torch.export program: {e}") from e
    metadata = json.loads(extra[PROGRAM_METADATA]) if extra[PROGRAM_METADATA] else {}
    exported_config(metadata, path)  # refuse a program without our metadata
    return program, metadata


# --------------------------------------------------------------------------------- checking


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """What a user reads off the logits (B, T, n_out): ``sigmoid`` for a 1-output head,
    ``softmax`` over the vocabulary for a language model."""
    return torch.sigmoid(logits) if logits.size(-1) == 1 else F.softmax(logits, dim=-1)


def verification_tokens(config: GPTConfig, batch: int, length: int, seed: int = 0
                        ) -> torch.Tensor:
    """Deterministic (batch, length) tokens: quasi-periodic waveforms (a fundamental with
    harmonics and a drift, of random rate and phase from ``seed``), each min-max scaled to
    0..100 (capped by the vocabulary) and rounded, as real windows are tokenised."""
    rng = np.random.default_rng(seed)
    t = np.arange(length)[None, :] / 100.0  # 100 Hz
    rate = rng.uniform(0.8, 2.5, (batch, 1)) * 2 * np.pi
    phase = rng.uniform(0, 2 * np.pi, (batch, 1))
    x = (np.sin(rate * t + phase) + 0.5 * np.sin(2 * rate * t + 2 * phase)
         + 0.25 * np.sin(3 * rate * t) + rng.uniform(-0.5, 0.5, (batch, 1)) * t)
    top = min(LEVELS, config.vocab_size - 1)
    lo, hi = x.min(axis=1, keepdims=True), x.max(axis=1, keepdims=True)
    scaled = (x - lo) / np.where(hi > lo, hi - lo, 1.0)
    return torch.from_numpy(np.round(scaled * top).astype(np.int64))


def verification_shapes(config: GPTConfig) -> list[tuple[int, int]]:
    """(batch, length) of :func:`check_export`: batch 1 and 3 at ``block_size``, and a shorter
    length (a third of it)."""
    bs = config.block_size
    return [(1, bs), (3, bs), (2, max(1, bs // 3))]


@dataclass
class ExportCheck:
    """How an exported file's outputs compare with the PyTorch model's."""

    path: Path
    shapes: list[tuple[int, int]]  # (batch, length) of the token windows compared
    prob_diff: float  # max |probability difference|
    logit_diff: float  # max |logit difference|
    logit_tol: float  # LOGIT_RTOL * max|logit| + LOGIT_ATOL
    compared: str = "logits"  # 'outputs': a head's, in the labels' terms (held as logits are)
    has_probabilities: bool = True  # False: a head of values (a regression), no probability

    @property
    def ok(self) -> bool:
        return self.prob_diff <= PROB_ATOL and self.logit_diff <= self.logit_tol

    def problem(self) -> str:
        """Why :attr:`ok` is false ("" when it is true)."""
        bad = []
        if not self.prob_diff <= PROB_ATOL:  # NaN counts as a difference
            bad.append(f"probabilities by {self.prob_diff:.2e} (> {PROB_ATOL:g})")
        if not self.logit_diff <= self.logit_tol:
            bad.append(f"{self.compared} by {self.logit_diff:.2e} (> {self.logit_tol:.2e})")
        return "" if not bad else "outputs differ from PyTorch's: " + ", ".join(bad)


def _runner(path: Path, with_head: bool = False) -> nn.Module:
    """The exported file as a callable: an :class:`~heartgpt.model.onnx_file.OnnxGPT`, a ``.pt2``'s module or the
    :class:`GPT` of a ``.safetensors`` or a hub folder; ``with_head``: the file's head applied
    (:func:`applied_model`)."""
    if path.suffix == ".pt2":
        return load_program(path)[0].module()
    if path.is_dir():  # a hub folder, read as load_model reads it (config.json first)
        loaded = load_hub(path)
    else:
        loaded = load_safetensors(path) if path.suffix == ".safetensors" else load_onnx(path)
    if not with_head:
        return loaded.model
    return head_applied(loaded, loaded.model)


def check_export(loaded: LoadedModel, path: str | os.PathLike,
                 shapes: list[tuple[int, int]] | None = None) -> ExportCheck:
    """Run the exported ``path`` (``.onnx``, ``.pt2``, ``.safetensors`` or a hub folder) and ``loaded.model`` on
    :func:`verification_tokens` windows of ``shapes`` (default :func:`verification_shapes`)
    and compare logits and probabilities (tolerances: module docstring). A head with tensors
    outside the GPT: both with the head applied (:func:`applied_model`), its outputs compared
    as logits (values in the labels' units: relative) and, for classes, as probabilities."""
    gpt = _torch_model(loaded)
    path = Path(path)
    shapes = shapes or verification_shapes(gpt.config)
    with_head = bool(loaded.head_state)
    model: nn.Module = applied_model(loaded) if with_head else gpt
    exported = _runner(path, with_head)
    classes = with_head and model.reading is not None and model.reading.kind == "class"
    prob_diff = logit_diff = top = 0.0
    device = _device_of(gpt)
    with torch.no_grad():
        for seed, (batch, length) in enumerate(shapes):
            tokens = verification_tokens(gpt.config, batch, length, seed).to(device)
            want, got = model(tokens).float(), exported(tokens).float()
            if got.shape != want.shape:
                raise CheckpointError(path, f"outputs of shape {tuple(got.shape)} for tokens "
                                      f"{tuple(tokens.shape)}; PyTorch: {tuple(want.shape)}")
            if want.numel() == 0:  # a tag head's positions: none in so short a window
                continue
            diff = (got - want).abs().max().item()
            logit_diff = max(logit_diff, diff)
            if not with_head:
                diff = (probabilities(got) - probabilities(want)).abs().max().item()
            prob_diff = max(prob_diff, diff if not with_head or classes else 0.0)
            top = max(top, want.abs().max().item())
    return ExportCheck(path, shapes, prob_diff, logit_diff, LOGIT_RTOL * top + LOGIT_ATOL,
                       "outputs" if with_head else "logits", not with_head or classes)
