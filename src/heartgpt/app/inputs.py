"""The input controls every tab shares, and reading them: a signal, its rate, a checkpoint.

A signal is an uploaded file (anything :func:`heartgpt.data.readers.read_signal` reads) or one of the
bundled demo signals; the sampling rate box may stay empty for a signal already at the
modality rate (ECG 100 Hz, PPG 50 Hz). The modality radio says what the signal is, so a PPG
recording given to an ECG checkpoint is refused with a message instead of being run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import numpy as np

from heartgpt.app.catalog import CheckpointInfo, choices
from heartgpt.app.demos import DEMOS, demo_signal
from heartgpt.app.results import USER_ERRORS, error_status, escape
from heartgpt.data.readers import read_signal
from heartgpt.data.tokenizer import Modality
from heartgpt.errors import InputError
from heartgpt.inference.loading import load_tool_model
from heartgpt.model.checkpoint_format import LoadedModel

AUTO = "auto"
MODALITY_CHOICES = [("as the checkpoint", AUTO), ("ECG", "ecg"), ("PPG", "ppg")]


@dataclass
class Signal:
    """A signal the user chose, before it meets a checkpoint."""

    samples: np.ndarray  # (n,) float64 at ``rate`` (or the modality rate when rate is None)
    rate: float | None  # Hz as given; None: the modality rate
    modality: str | None  # 'ecg' / 'ppg' as stated; None: the checkpoint's
    name: str  # shown in messages and titles
    stem: str  # of the output files

    def rate_for(self, mod: Modality) -> float:
        """Hz of the samples: as given, else the modality rate."""
        return self.rate or mod.sample_rate


@dataclass
class SignalInputs:
    """The components of one tab's signal choice."""

    file: gr.File
    demo: gr.Dropdown
    rate: gr.Number
    modality: gr.Radio

    @property
    def components(self) -> list:
        return [self.file, self.demo, self.rate, self.modality]


def signal_inputs(prefix: str, demos: list[str]) -> SignalInputs:
    """Upload, demo picker, rate and modality; picking a demo fills in its rate and modality,
    an upload clears the demo."""
    file = gr.File(label="signal: CSV / TXT (one column or row) or .npy", type="filepath",
                   elem_id=f"{prefix}-file")
    demo = gr.Dropdown([("(none)", ""), *[(d, d) for d in demos]], value="",
                       label="... or a bundled demo signal (synthetic)", elem_id=f"{prefix}-demo")
    with gr.Row():
        rate = gr.Number(None, label="sampling rate (Hz)", step=1,
                         info="empty or 0: the modality rate (ECG 100, PPG 50)",
                         elem_id=f"{prefix}-rate")
        modality = gr.Radio(MODALITY_CHOICES, value=AUTO, label="signal modality",
                            elem_id=f"{prefix}-modality")

    def picked(name: str) -> tuple:
        if not name:
            return gr.update(), gr.update(), gr.update()
        d = DEMOS[name]
        return None, d.sample_rate, d.modality

    demo.input(picked, demo, [file, rate, modality], queue=False, show_progress="hidden")
    file.upload(lambda: "", None, demo, queue=False, show_progress="hidden")
    return SignalInputs(file, demo, rate, modality)


def checkpoint_input(infos: list[CheckpointInfo], role: str, label: str, elem_id: str,
                     optional: bool = False, value: str | None = None) -> gr.Dropdown:
    """A drop-down of the checkpoints fit for ``role`` (see :meth:`CheckpointInfo.fits`)."""
    options = choices(infos, role)
    if optional:
        options = [("(none)", ""), *options]
    if value is None:
        value = options[0][1] if options else None
    info = None if options else "no suitable checkpoint in the folders searched"
    return gr.Dropdown(options, value=value, label=label, info=info, elem_id=elem_id)


def read_input_signal(file: str | None, demo: str | None, rate: float | None, modality: str,
                      allow_nan: bool = False) -> Signal:
    """The chosen signal; raises :class:`InputError` with a message for the page."""
    stated = None if modality in (None, "", AUTO) else modality
    if rate is not None and not (np.isfinite(rate) and rate >= 0):
        raise InputError("sampling rate", f"must be a positive number of Hz, got {rate}")
    rate = float(rate) if rate else None
    if file:
        name = Path(file).name
        try:
            x = read_signal(file, allow_nan=allow_nan)
        except InputError as e:
            raise InputError(name, e.problem) from None
        finite = x[np.isfinite(x)]
        if len(finite) > 1 and finite.max() == finite.min():  # caught early: at upload
            raise InputError(name, f"flat signal: all {len(finite)} samples equal {finite[0]:g}")
        return Signal(x, rate, stated, name, Path(file).stem)
    if demo:
        d = DEMOS[demo]
        return Signal(demo_signal(demo), rate, stated or d.modality, f"demo: {demo}", d.stem)
    raise InputError("signal", "upload a file or pick a demo signal first")


def describe_upload(file: str | None, allow_nan: bool) -> str:
    """One line about an uploaded file: its length, or what is wrong with it."""
    if not file:
        return ""
    x = read_input_signal(file, None, None, AUTO, allow_nan).samples
    bad = int((~np.isfinite(x)).sum())
    more = f", {bad} NaN/inf (windows holding them are skipped)" if bad else ""
    return f"{Path(file).name}: {len(x)} samples{more}. Set the rate, then run."


def load_for(path: str | None, need: str, signal: Signal,
             refuse_task: str | None = None) -> tuple[LoadedModel, Modality]:
    """:func:`load_tool_model` for a signal; a modality mismatch is refused with a message."""
    if not path:
        raise InputError("checkpoint", "choose a checkpoint")
    name = Path(path).name
    try:
        try:
            loaded, mod = load_tool_model(path, need, None, refuse_task)
        except InputError:
            if signal.modality is None:
                raise
            # a checkpoint that does not say its modality takes the signal's
            loaded, mod = load_tool_model(path, need, signal.modality, refuse_task)
    except InputError as e:
        raise InputError(name, e.problem) from None
    if signal.modality is not None and signal.modality != mod.name:
        raise InputError(signal.name, f"is {signal.modality.upper()} but checkpoint {name} is a "
                                     f"{mod.name.upper()} model; choose a "
                                     f"{signal.modality.upper()} checkpoint")
    return loaded, mod


def output_file(out_dir: Path, signal: Signal, suffix: str) -> Path:
    """``<out_dir>/<signal stem><suffix>``."""
    return Path(os.fspath(out_dir)) / f"{signal.stem}{suffix}"


def report_uploads(sig: SignalInputs, status: gr.Markdown, allow_nan: bool,
                   track: Callable[[gr.Request, str | None], None]) -> None:
    """Say at upload time what the file holds or what is wrong with it (``track`` records the
    upload for deletion at session end)."""

    def on_upload(file: str | None, request: gr.Request) -> str:
        track(request, file)
        try:
            return escape(describe_upload(file, allow_nan))
        except USER_ERRORS as e:
            return error_status(e)

    sig.file.upload(on_upload, sig.file, status, show_progress="hidden")
