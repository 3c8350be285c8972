"""Vector-similarity tab: hidden vectors of same-value tokens on rising vs falling edges."""

from __future__ import annotations

import csv
from pathlib import Path

import gradio as gr
import numpy as np

from heartgpt.app.context import AppContext
from heartgpt.app.demos import SHORT_DEMOS
from heartgpt.app.inputs import Signal, load_for, output_file
from heartgpt.app.results import escape, figure_output, files_output
from heartgpt.app.tabs import tool_tab
from heartgpt.errors import about
from heartgpt.inference.interpretability import homonyms, trace_signal
from heartgpt.inference.plots import plot_homonyms, save_figure

HEADERS = ["depth", "same_phase", "other_phase"]


def homonyms_run(
    signal: Signal, checkpoint: str, out_dir: Path, *, value: int | None
) -> tuple[str, Path, list[list], list[Path]]:
    """(status, figure, table rows, files): cosine similarity at every depth."""
    loaded, mod = load_for(checkpoint, "any", signal)
    with about(signal.name):
        trace = trace_signal(loaded.model, signal.samples, signal.rate_for(mod), mod)
        res = homonyms(trace.hidden_states, trace.tokens, value)
    depths = ["embedding", *(f"block {i}" for i in range(len(res.within) - 1))]
    rows = [[d, round(float(w), 4), round(float(a), 4)]
            for d, w, a in zip(depths, res.within, res.across, strict=True)]
    png = save_figure(plot_homonyms(res.similarity, res.labels, res.within, res.across,
                                    res.value, title=f"{signal.name}: cosine similarity of"),
                      output_file(out_dir, signal, "_homonyms.png"))
    csv_path = output_file(out_dir, signal, "_homonyms.csv")
    with csv_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(HEADERS)
        for d, (a, b) in enumerate(zip(res.within, res.across, strict=True)):
            w.writerow([d, f"{a:.6f}", f"{b:.6f}"])
    npz = output_file(out_dir, signal, "_homonyms.npz")
    np.savez_compressed(npz, value=res.value, positions=res.positions, labels=res.labels,
                        similarity=res.similarity, within=res.within, across=res.across)
    counts = {k: int((res.labels == k).sum()) for k in ("rising", "falling")}
    status = (f"Token value {res.value}: {counts['rising']} on rising and {counts['falling']} "
              f"on falling edges of the last {len(trace.tokens)} samples of {signal.name}. "
              f"After the last block: same phase {res.within[-1]:.4f}, other phase "
              f"{res.across[-1]:.4f}.")
    return escape(status), png, rows, [png, csv_path, npz]


def build(ctx: AppContext) -> None:
    """The Vector similarity tab."""
    with tool_tab(ctx, "Vector similarity", "homonyms", "hom", "Tokens of the same value sit on "
                  "the rising and on the falling edge of the waveform (homonyms): how similar "
                  "their hidden vectors stay, layer by layer.") as tab:
        with tab.inputs(SHORT_DEMOS, "any", "checkpoint", run="Compare"):
            value = gr.Number(-1, label="token value (-1: the most frequent on both edges)",
                              precision=0, elem_id="hom-value")
        with tab.results():
            figure = figure_output("cosine similarity", "hom-figure")
            table = gr.Dataframe(headers=HEADERS, label="mean cosine similarity by depth",
                                 interactive=False, elem_id="hom-table")
            files = files_output("downloads (PNG, CSV, .npz)", "hom-files")

    def compare(signal: Signal, checkpoint: str, out_dir: Path, value_in: float | None
                ) -> tuple:
        return homonyms_run(signal, checkpoint, out_dir,
                            value=None if value_in is None or value_in < 0 else int(value_in))

    tab.connect(compare, [value], [figure, table, files], desc="tracing the model",
                show_progress_on=figure)
