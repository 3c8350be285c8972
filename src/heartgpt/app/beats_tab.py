"""Beat-detection tab: finger-PPG beats and per-beat confidence on recordings of any length,
streamed through the model with a progress bar."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import gradio as gr
import numpy as np

from heartgpt.app.context import AppContext
from heartgpt.app.demos import PPG_DEMOS
from heartgpt.app.inputs import Signal, load_for, output_file
from heartgpt.app.results import escape, figure_output, files_output
from heartgpt.app.tabs import tool_tab
from heartgpt.errors import InputError, about
from heartgpt.inference.beat_detection import (
    SHIFT,
    TAILS,
    beats_title,
    detect_beats,
    quality_category,
    write_beats_csv,
    write_beats_json,
)
from heartgpt.inference.plots import plot_beats, save_figure
from heartgpt.model import GPT

CHUNK_SECONDS = 600.0  # the recording goes through the model in pieces of this length
TABLE_ROWS = 1000  # beats listed on the page; the CSV has all


def default_shift(model: GPT) -> int:
    """The released shift (100 of 500 samples), scaled to the model's window."""
    return min(SHIFT, max(1, model.config.block_size // 5))


def beats_run(
    signal: Signal, checkpoint: str, out_dir: Path, *, tail: str, shift: int | None,
    plot_start: float, plot_seconds: float, progress: Callable[[int, int], None] | None = None,
) -> tuple[str, Path, list[list], list[Path]]:
    """(status, figure, per-beat rows, files); ``progress(samples done, total)`` as the
    recording streams through the model."""
    loaded, mod = load_for(checkpoint, "binary", signal, refuse_task="af")
    rate = signal.rate_for(mod)
    shift = default_shift(loaded.model) if shift is None else shift
    seconds = len(signal.samples) / rate
    if not (0 <= plot_start < seconds and plot_seconds >= 0):  # checked before the long part
        raise InputError("plot", f"must start in 0..{seconds:.1f} s and last 0 s (all) or more")
    with about(signal.name):
        beats = detect_beats(loaded.model, signal.samples, rate, mod, tail=tail, shift=shift,
                             chunk_size=max(1, int(CHUNK_SECONDS * mod.sample_rate)),
                             progress=progress)
    csv_path = write_beats_csv(output_file(out_dir, signal, "_beats.csv"), beats, rate)
    json_path = write_beats_json(output_file(out_dir, signal, "_beats.json"), beats, signal.name,
                                 Path(checkpoint).name)
    npz = output_file(out_dir, signal, "_beat_confidence.npz")
    np.savez_compressed(npz, confidence=beats.confidence, peaks=beats.peaks,
                        heights=beats.heights, sample_rate=beats.sample_rate)
    start = int(plot_start * beats.sample_rate)
    length = int(plot_seconds * beats.sample_rate) or None
    title = beats_title(signal.name, beats)
    png = save_figure(plot_beats(beats.signal, beats.confidence, beats.peaks, beats.sample_rate,
                                 start=start, length=length, title=title),
                      output_file(out_dir, signal, "_beats.png"))
    rows = [[i, round(p / beats.sample_rate, 3), round(float(h), 4), quality_category(h)]
            for i, (p, h) in enumerate(zip(beats.peaks[:TABLE_ROWS],
                                           beats.heights[:TABLE_ROWS], strict=True))]
    status = (f"{len(beats.peaks)} beats in {seconds / 60:.1f} min of {signal.name}, median "
              f"confidence {beats.median_height:.4f} ({beats.category} quality); "
              f"{beats.n_windows} windows every {shift} samples, {len(beats.skipped)} skipped.")
    if len(beats.peaks) > TABLE_ROWS:
        status += f" The table lists the first {TABLE_ROWS} beats; the CSV has all."
    return escape(status), png, rows, [csv_path, json_path, npz, png]


def build(ctx: AppContext) -> None:
    """The Beat detection tab."""
    with tool_tab(ctx, "Beat detection", "beats", "beats", "Beats of a finger-PPG recording of "
                  "any length (an hour streams through in bounded memory) with each beat's "
                  "confidence and the signal quality.", allow_nan=True) as tab:
        with tab.inputs(PPG_DEMOS, "beats", "beat fine-tuned checkpoint", run="Detect beats"):
            with gr.Row():
                tail = gr.Radio(list(TAILS), value="align", label="tail windows",
                                info="release: zero-padded, as the released GUI",
                                elem_id="beats-tail")
                shift = gr.Number(0, label=f"window shift (samples; 0: block/5, at most {SHIFT})",
                                  precision=0, elem_id="beats-shift")
            with gr.Row():
                plot_start = gr.Number(0, label="plot from (s)", elem_id="beats-plot-start")
                plot_seconds = gr.Number(30, label="plot length (s; 0: all)",
                                         elem_id="beats-plot-seconds")
        with tab.results():
            figure = figure_output("beats and confidence", "beats-figure")
            table = gr.Dataframe(headers=["beat", "time_s", "confidence", "quality"],
                                 label="per-beat confidence", interactive=False,
                                 max_height=300, elem_id="beats-table")
            files = files_output("downloads (CSV, JSON, .npz, PNG)", "beats-files")

    def detect(signal: Signal, checkpoint: str, out_dir: Path, tail_value: str,
               shift_value: float | None, start: float | None, seconds: float | None, *,
               progress: Callable[[int, int], None]) -> tuple:
        return beats_run(signal, checkpoint, out_dir, tail=tail_value,
                         shift=int(shift_value) if shift_value else None,
                         plot_start=float(start or 0), plot_seconds=float(seconds or 0),
                         progress=progress)

    tab.connect(detect, [tail, shift, plot_start, plot_seconds], [figure, table, files],
                desc="detecting beats", unit="samples", show_progress_on=figure)
