"""Apply tab: any checkpoint on an uploaded recording, its outputs over the signal.

What ``python -m heartgpt.predict`` writes for one file, through the same call
(:func:`heartgpt.inference.apply.apply`): without a mode, what the checkpoint is (a fine-tune's
own head: classes with their probabilities, values in the labels' units, a tag head's values at
their times; AF or beats for those models; the next-token loss of a pre-trained model).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import gradio as gr

from heartgpt.app.context import AppContext
from heartgpt.app.demos import SHORT_DEMOS
from heartgpt.app.inputs import Signal, load_for, output_file
from heartgpt.app.results import escape, figure_output, files_output
from heartgpt.app.tabs import tool_tab
from heartgpt.errors import about
from heartgpt.inference.apply import Applied, apply
from heartgpt.inference.output_plots import plot_outputs
from heartgpt.inference.plots import save_figure
from heartgpt.inference.prediction import MODES

AUTO_CHOICE = ("what the checkpoint is", "")
TABLE_ROWS = 1000  # rows listed on the page; the CSV has all
# The recording row's columns that describe the file, not the model's answer.
_FILE_KEYS = ("sample_rate_hz", "duration_s")


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def summary_text(signal_name: str, result: Applied) -> str:
    """The status line: the mode and every number of the recording's row."""
    numbers = ", ".join(f"{k} {_number(v)}" for k, v in result.recording.items()
                        if k not in _FILE_KEYS and v is not None)
    return f"{signal_name} (mode={result.mode}): {numbers}."


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    """``rows`` as a CSV, the columns in first-seen order (as ``predict``'s tables)."""
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), restval="")
        w.writeheader()
        w.writerows(rows)
    return path


def apply_run(signal: Signal, checkpoint: str, out_dir: Path, *, mode: str | None,
              stride: int | None) -> tuple[str, Path, dict[str, Any], list[Path]]:
    """(status, figure, table, files) of ``checkpoint`` applied to ``signal``."""
    loaded, mod = load_for(checkpoint, "any", signal)
    rate = signal.rate_for(mod)
    settings = {} if stride is None else {"stride": stride}
    with about(signal.name):
        result = apply(loaded, signal.samples, rate, mode, modality=signal.modality, **settings)
    window_seconds = loaded.model.config.block_size / mod.sample_rate
    status = summary_text(signal.name, result)
    png = save_figure(plot_outputs(signal.samples, rate, result.windows, window_seconds,
                                   title=f"{signal.name}: {Path(checkpoint).name}, "
                                         f"mode={result.mode}"),
                      output_file(out_dir, signal, f"_{result.mode}.png"))
    rows_csv = write_rows(output_file(out_dir, signal, f"_{result.mode}_rows.csv"),
                          result.windows)
    json_path = output_file(out_dir, signal, f"_{result.mode}.json")
    json_path.write_text(json.dumps({"recording": signal.name,
                                     "checkpoint": Path(checkpoint).name, "mode": result.mode,
                                     "settings": result.settings, **result.recording},
                                    indent=1))
    shown = result.windows[:TABLE_ROWS]
    headers = list(dict.fromkeys(k for row in shown for k in row))
    table = {"headers": headers,
             "data": [[row.get(k, "") for k in headers] for row in shown]}
    if len(result.windows) > TABLE_ROWS:
        status += f" The table lists the first {TABLE_ROWS} rows; the CSV has all."
    return escape(status), png, table, [rows_csv, json_path, png]


def build(ctx: AppContext) -> None:
    """The Apply tab."""
    with tool_tab(ctx, "Apply any model", "apply", "apply", "Any checkpoint on a recording: "
                  "a fine-tune's own head (classes and their probabilities, values in the "
                  "labels' units, a tag head's values at their times), AF or beats for those "
                  "models, the next-token loss of a pre-trained model; as `python -m "
                  "heartgpt.predict` writes them.", allow_nan=True) as tab:
        with tab.inputs(SHORT_DEMOS, "any", "checkpoint", run="Apply"), gr.Row():
            mode = gr.Dropdown([AUTO_CHOICE, *[(m, m) for m in MODES]], value="",
                               label="mode", elem_id="apply-mode")
            stride = gr.Number(0, label="window stride (samples; 0: the mode's own)",
                               precision=0, elem_id="apply-stride")
        with tab.results():
            figure = figure_output("outputs over the signal", "apply-figure")
            table = gr.Dataframe(label="rows (a window, position or beat each)",
                                 interactive=False, max_height=300, elem_id="apply-table")
            files = files_output("downloads (CSV, JSON, PNG)", "apply-files")

    def run(signal: Signal, checkpoint: str, out_dir: Path, mode_value: str | None,
            stride_value: float | None) -> tuple:
        return apply_run(signal, checkpoint, out_dir, mode=mode_value or None,
                         stride=int(stride_value) if stride_value else None)

    tab.connect(run, [mode, stride], [figure, table, files], desc="applying the model",
                show_progress_on=figure)
