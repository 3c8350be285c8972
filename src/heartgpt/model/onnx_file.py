"""Reading an ``.onnx`` export of :func:`heartgpt.model.export.export_onnx`: :func:`load_onnx`
gives an :class:`OnnxGPT`, a drop-in for :class:`~heartgpt.model.GPT` wherever the tools call
``model(x)`` (AF screening, beat detection, exact-mode generation), run by ONNX Runtime.

Also the names every heartgpt export shares (its format tag, the input and output names, the
``heartgpt.`` prefix of an ``.onnx`` file's ``metadata_props``) and :func:`exported_config`, the
:class:`~heartgpt.model.GPTConfig` stored in an export's metadata. ``onnxruntime`` is optional
(``pip install 'heartgpt[onnx]'``) and imported only when an ONNX file is read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from heartgpt.model.checkpoint_format import CheckpointError, LoadedModel, existing_file
from heartgpt.model.gpt import GPT, GPTConfig

EXPORT_FORMAT = "heartgpt-export-1"
INPUT_NAME = "tokens"  # int64 (batch, time)
OUTPUT_NAME = "logits"  # float32 (batch, time, n_out)
# An exported AppliedHead (a head with tensors outside the GPT): its output, and the metadata
# key and value saying its outputs are the head's, in the labels' terms
HEAD_OUTPUT_NAME = "outputs"  # float32 (batch, K) or (batch, time // stride, K)
OUTPUTS_KEY, HEAD_OUTPUTS = "outputs", "head"
ONNX_PREFIX = "heartgpt."  # metadata_props keys of an .onnx file: heartgpt.config, ...
ONNX_INSTALL_HINT = "pip install 'heartgpt[onnx]'"


def exported_config(metadata: dict[str, str], path: str | os.PathLike) -> GPTConfig:
    """The :class:`GPTConfig` stored in ``metadata``; a file without one is a CheckpointError."""
    if metadata.get("format") != EXPORT_FORMAT or "config" not in metadata:
        raise CheckpointError(path, "no heartgpt metadata (not written by python -m "
                              f"heartgpt.export; format={metadata.get('format')!r})")
    try:
        return GPTConfig.from_dict(json.loads(metadata["config"]))
    except (ValueError, TypeError) as e:
        raise CheckpointError(path, f"unreadable heartgpt config in the metadata: {e}") from e


class OnnxGPT(nn.Module):
    """An exported ``.onnx`` HeartGPT run by ONNX Runtime, callable like :class:`GPT`.

    ``model(idx)``: int tokens (B, T), T <= ``config.block_size`` -> float32 logits
    (B, T, n_out) on ``idx``'s device. No parameters: ``.to(device)`` moves an empty buffer that
    says where it runs (:attr:`device`); on a CUDA device ONNX Runtime's CUDA provider is used
    when it is installed, otherwise the CPU one. ``generate`` is :meth:`GPT.generate` (it needs
    only ``forward``); what needs the network's internals (``inspect``, cached decoding) raises
    :class:`CheckpointError`.

    ``applies_head``: the file is an exported
    :class:`~heartgpt.heads.applied.AppliedHead` (output ``outputs``: the head's outputs in the
    labels' terms, not logits); :func:`~heartgpt.heads.applied.applied_head` uses it as it is.
    """

    def __init__(self, path: str | os.PathLike, config: GPTConfig, session: Any = None,
                 threads: int | None = None, applies_head: bool = False) -> None:
        """``session``: an ``onnxruntime.InferenceSession`` of ``path`` already open on the CPU
        (else one is opened); ``threads``: ONNX Runtime's intra-op threads (None: its default);
        ``applies_head``: its graph ends in the head's outputs (``outputs``)."""
        super().__init__()
        self.path = Path(path)
        self.config = config
        self.threads = threads
        self.applies_head = applies_head
        self.output_name = HEAD_OUTPUT_NAME if applies_head else OUTPUT_NAME
        self.register_buffer("_where", torch.empty(0), persistent=False)
        self._sessions: dict[str, Any] = {}
        if session is not None:
            self._sessions["cpu"] = session

    @property
    def device(self) -> torch.device:
        """Where the model runs (moved by ``.to()``)."""
        return self._where.device

    def session(self) -> Any:
        """The ONNX Runtime session for :attr:`device` (opened on first use)."""
        import onnxruntime as ort

        device = self.device
        use_cuda = (device.type == "cuda"
                    and "CUDAExecutionProvider" in ort.get_available_providers())
        key = f"cuda:{device.index or 0}" if use_cuda else "cpu"
        if key not in self._sessions:
            providers: list[Any] = ["CPUExecutionProvider"]
            if use_cuda:
                providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
            self._sessions[key] = open_session(self.path, providers, self.threads)
        return self._sessions[key]

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, n_out) float32 of tokens ``idx`` (B, T), on ``idx``'s device (an
        exported head: its outputs, (B, K) or (B, P, K))."""
        if idx.dim() != 2 or idx.size(0) < 1 or idx.size(1) < 1:
            raise ValueError(f"expected tokens of shape (batch, time), got {tuple(idx.shape)}")
        if idx.size(1) > self.config.block_size:
            raise ValueError(f"sequence length {idx.size(1)} exceeds block_size "
                             f"{self.config.block_size}")
        tokens = idx.detach().to("cpu", torch.int64).contiguous().numpy()
        (logits,) = self.session().run([self.output_name], {INPUT_NAME: tokens})
        return torch.from_numpy(logits).to(idx.device)

    generate = GPT.generate  # the exact sampler: calls only forward

    def _not_here(self, what: str) -> CheckpointError:
        return CheckpointError(self.path, f"an ONNX export runs the forward pass only; {what} "
                               "needs the PyTorch checkpoint it was exported from")

    def inspect(self, idx: torch.Tensor) -> Any:
        raise self._not_here("attention weights and hidden states (inspect)")

    def forward_cached(self, idx: torch.Tensor, cache: Any) -> torch.Tensor:
        raise self._not_here("cached decoding")

    def generate_cached(self, idx: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        raise self._not_here("cached generation (use exact mode)")

    def extra_repr(self) -> str:
        head = ", applies_head=True" if self.applies_head else ""
        return f"path={str(self.path)!r}, config={self.config}{head}"


def open_session(path: str | os.PathLike, providers: list[Any] | None = None,
                 threads: int | None = None) -> Any:
    """An ``onnxruntime.InferenceSession`` of ``path`` (CPU unless ``providers`` say otherwise).

    Raises:
        CheckpointError: onnxruntime is not installed, or the file is not an ONNX model.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise CheckpointError(path, f"reading an ONNX model needs onnxruntime: "
                              f"{ONNX_INSTALL_HINT}") from None
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3  # errors only
    try:
        return ort.InferenceSession(str(path), options,
                                    providers=providers or ["CPUExecutionProvider"])
    except Exception as e:
        raise CheckpointError(path, f"cannot read as an ONNX model: {e}") from e


def load_onnx(path: str | os.PathLike, threads: int | None = None) -> LoadedModel:
    """Load an ``.onnx`` of :func:`export_onnx` as an :class:`OnnxGPT` (on the CPU).

    ``threads``: ONNX Runtime's intra-op threads (None: its default, every core).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: onnxruntime missing, not an ONNX model, no heartgpt metadata, or a
            graph that does not take ``tokens`` and give ``logits`` of the stored config.
    """
    path = existing_file(path)
    session = open_session(path, threads=threads)
    stored = session.get_modelmeta().custom_metadata_map
    metadata = {k.removeprefix(ONNX_PREFIX): v for k, v in stored.items()
                if k.startswith(ONNX_PREFIX)}
    config = exported_config(metadata, path)
    applies_head = metadata.get(OUTPUTS_KEY) == HEAD_OUTPUTS
    inputs = [i.name for i in session.get_inputs()]
    outputs = {o.name: o.shape for o in session.get_outputs()}
    if applies_head:  # the head's outputs: their width is the head's, read by its metadata
        name, widths = HEAD_OUTPUT_NAME, None
    else:
        name, widths = OUTPUT_NAME, (config.n_out, None)
    width = outputs.get(name, [None])[-1]
    if inputs != [INPUT_NAME] or name not in outputs or (widths and width not in widths):
        raise CheckpointError(path, f"graph inputs {inputs} / outputs {outputs} do not match "
                              f"'{INPUT_NAME}' -> '{name}'"
                              + ("" if applies_head else f" (.., {config.n_out})"))
    try:
        head = json.loads(metadata["head"]) if metadata.get("head") else None
        schema = json.loads(metadata["label_schema"]) if metadata.get("label_schema") else None
    except ValueError:
        raise CheckpointError(path, "its 'head' or 'label_schema' metadata is not JSON") from None
    if applies_head and head is None:
        raise CheckpointError(path, "its outputs are a head's but its metadata has no 'head'")
    model = OnnxGPT(path, config, session, threads, applies_head=applies_head)
    return LoadedModel(model, metadata.get("modality") or None, metadata.get("task", "pretrain"),
                       str(path), metadata.get("synthetic") == "true", head=head,
                       hparams={} if schema is None else {"label_schema": schema})
