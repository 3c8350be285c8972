"""``heartgpt.apply``: a model applied to one signal in one call, the tables ``predict`` writes.

    import heartgpt
    result = heartgpt.apply("PPGPT_AF_1k_iters.zip", signal, 50)   # signal: a 1-D array, 50 Hz
    result.recording["recording_af_prob"], result.windows[0]["af_prob"]

``model`` is anything :func:`heartgpt.load_model` reads (a path) or a
:class:`~heartgpt.model.checkpoint_format.LoadedModel` already loaded (reused across calls).
``mode=None`` applies what the checkpoint is, as ``python -m heartgpt.predict`` without
``mode=`` does (:func:`~heartgpt.inference.prediction.default_mode`: ``loss`` for a pre-trained
model, ``af`` / ``beats`` for a binary AF or beat fine-tune, ``head`` for every other
fine-tune); ``mode="af" | "beats" | "loss" | "embed" | "head"`` names one. The mode's settings
are ``conf/mode/<mode>.yaml``'s, and a keyword replaces one (``stride=100``, ``batch_size=8``);
a keyword the mode does not read is an :class:`~heartgpt.errors.InputError` naming it.

The model is prepared and applied by the functions ``predict`` calls
(:func:`~heartgpt.inference.predictor.prepare_model`,
:func:`~heartgpt.inference.prediction.predict_recording`), so the numbers are those of
``predict``'s ``recordings.csv`` row and ``windows.csv`` / ``beats.csv`` rows for a file holding
the same signal (without the file columns: ``recording``, ``path``, ``format``, ``status``,
``error``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from heartgpt.data.plausibility import check_recording
from heartgpt.data.recording import Recording
from heartgpt.data.signal_quality import TrustSettings, load_trust
from heartgpt.errors import InputError
from heartgpt.inference.prediction import AUTO, MODES, predict_recording
from heartgpt.inference.predictor import mode_settings, prepare_model
from heartgpt.inference.window_trust import trust_context
from heartgpt.model.checkpoint_format import LoadedModel
from heartgpt.model.checkpoints import load_model

log = logging.getLogger(__name__)
SIGNAL = "signal"  # what errors about the signal are named by (there is no file)


@dataclass
class Applied:
    """One signal's results, as ``predict`` writes them for one recording.

    Attributes:
        mode: the mode applied (``mode=None``: the one the checkpoint is).
        settings: that mode's settings as used (``conf/mode/<mode>.yaml`` and the keywords).
        recording: the ``recordings.csv`` row: ``sample_rate_hz``, ``duration_s`` and the
            mode's numbers (``recording_af_prob``, ``n_beats``, ``mean_loss``, ``mean_<value>``,
            ...).
        windows: the ``windows.csv`` rows (af, loss, embed, head: a window, or a tagged
            position, each) or ``beats.csv`` rows (beats: a beat each), in order.
        array: ``embed``: the pooled vectors (usable windows, ``n_embd``), row
            ``windows[i]["embedding_row"]`` for window i; ``None`` in the other modes.
    """

    mode: str
    settings: dict[str, Any]
    recording: dict[str, Any]
    windows: list[dict[str, Any]] = field(default_factory=list)
    array: np.ndarray | None = None


def _settings(mode: str | None, given: dict[str, Any]) -> dict[str, Any]:
    """The settings ``prepare_model`` reads: the named mode's yaml with the keywords in place,
    or (``mode=None``) ``auto`` with the keywords, which the chosen mode's yaml takes in."""
    name = AUTO if mode is None else mode
    if name not in (*MODES, AUTO):
        raise InputError("mode", f"must be one of {MODES} or None (what the checkpoint is), "
                                 f"got {mode!r}")
    settings = mode_settings(name)
    for key, value in given.items():
        if key == "name" or key not in settings:
            known = ", ".join(k for k in settings if k != "name")
            raise InputError(f"mode.{key}", f"is not a setting of mode={name} "
                                            f"(its settings: {known})")
        settings[key] = value
    return settings


def apply(model: str | os.PathLike | LoadedModel, signal: np.ndarray, sample_rate: float,
          mode: str | None = None, *, modality: str | None = None,
          trust: str | TrustSettings | None = "default", **mode_settings: Any) -> Applied:
    """Apply ``model`` to one 1-D ``signal`` sampled at ``sample_rate`` Hz: the tables
    ``python -m heartgpt.predict`` writes for one recording (see the module docstring).

    Args:
        model: a checkpoint path (released ``.zip``/``.pth``, ``.safetensors``, ``.ckpt``,
            ``.onnx``) or a :class:`LoadedModel` from :func:`heartgpt.load_model`.
        signal: the samples, a 1-D array.
        sample_rate: its rate in Hz (it is resampled to the model's modality rate).
        mode: ``None`` (what the checkpoint is) or one of ``af``, ``beats``, ``loss``,
            ``embed``, ``head``.
        modality: ``"ecg"``/``"ppg"``, for a checkpoint that does not say its own (must agree
            with one that does); stating it also lets through a signal that looks like the
            other modality, with a warning, as ``predict modality=...`` does.
        trust: the thresholds of the trust checks (``af``, ``head``: each window's signal
            quality and OOD score, the rhythm beside P(AF)): a ``conf/trust/<name>.yaml`` name
            or a yaml path, :class:`TrustSettings`, or None (no checks: the bare numbers).
        **mode_settings: settings of ``conf/mode/<mode>.yaml`` to replace (``stride``,
            ``tail``, ``batch_size``, ``threshold``, ``shift``, ``chunk_seconds``, ``pool``).

    Raises:
        InputError: a setting the mode does not read or a bad value (``mode.<key>``), a
            checkpoint unfit for the mode, a signal that is not a non-empty 1-D array of
            numbers, a rate that is not positive, or a signal too short for one window.
    """
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    settings = _settings(mode, mode_settings)
    net, mod, name, settings = prepare_model(loaded, settings, modality)
    if isinstance(trust, str):
        trust = load_trust(trust)
    context = None if trust is None else trust_context(loaded, trust)
    try:
        x = np.asarray(signal, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InputError(SIGNAL, f"is not an array of numbers ({e})") from None
    if x.ndim != 1 or x.size == 0:
        raise InputError(SIGNAL, f"must be a non-empty 1-D array, got shape {x.shape}")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, float, np.number)) \
            or not float(sample_rate) > 0:
        raise InputError("sample_rate", f"must be a positive rate in Hz, got {sample_rate!r}")
    rate = float(sample_rate)
    for warning in check_recording(SIGNAL, x, rate, mod.name, stated=modality is not None):
        log.warning("%s: %s", SIGNAL, warning)
    rec = Recording(name=SIGNAL, path=Path(SIGNAL), signal=x, sample_rate=rate)
    try:
        result = predict_recording(net, rec, mod, settings, context)
    except InputError:
        raise
    except ValueError as e:  # too short, no usable window: what predict records for a file
        raise InputError(SIGNAL, str(e)) from None
    row = {"sample_rate_hz": rate, "duration_s": len(x) / rate, **result.row}
    return Applied(name, settings, row, result.items, result.array)
