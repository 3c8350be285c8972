"""Any model's outputs drawn over the recording they describe (the app's Apply tab).

The rows are those ``predict`` writes (:class:`heartgpt.inference.apply.Applied`'s
``windows``): a window (``start_s``, ``end_s``), a tagged position (``time_s``,
``position_end_s``) or a beat (``time_s``) each, with the model's numbers in the other columns
(``prob_<class>``, a value per label column, ``af_prob``, ``loss``, ``confidence``). Each number
column is drawn as a step over the time its row covers, or as points for beats, under the
signal; a window row with ``reliable`` false (the trust checks flagged it) is hatched grey on
both axes, with a legend entry "unreliable".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from heartgpt.inference.plots import finite_limits, finite_or_nan, shade_spans

# Columns that say where a row is or what it is, not what the model says about it.
PLACE_COLUMNS = frozenset({
    "window", "start_sample", "end_sample", "start_s", "end_s", "position", "time_s",
    "position_end_s", "status", "overlaps_previous", "embedding_row", "beat", "sample",
    "input_sample", "quality", "predicted"})
MAX_LINES = 8  # columns drawn; a head of more classes draws its first ones and says so


def output_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The number columns of ``rows`` that hold the model's outputs, in first-seen order."""
    seen: dict[str, None] = {}
    for row in rows:
        for key, value in row.items():
            if key not in PLACE_COLUMNS and isinstance(value, (int, float)) \
                    and not isinstance(value, bool):
                seen.setdefault(key)
    return list(seen)


def _span(row: Mapping[str, Any], window_seconds: float) -> tuple[float, float] | None:
    """The seconds a row covers: a tagged position's, a window's, or None (a beat: a point)."""
    if "position_end_s" in row:
        return float(row["time_s"]), float(row["position_end_s"])
    if "start_s" in row:
        end = row.get("end_s")
        start = float(row["start_s"])
        return start, float(end) if end is not None else start + window_seconds
    return None


def unreliable_row_spans(rows: Sequence[Mapping[str, Any]], window_seconds: float
                         ) -> list[tuple[float, float]]:
    """The seconds covered by the rows whose ``reliable`` is false (rows without the column,
    and beats, are not judged), overlapping spans merged."""
    spans: list[tuple[float, float]] = []
    for row in rows:
        if row.get("reliable", True) in (False, "False", "false", 0):
            span = _span(row, window_seconds)
            if span is not None:
                spans.append(span)
    merged: list[tuple[float, float]] = []
    for a, b in sorted(spans):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def plot_outputs(signal: np.ndarray, sample_rate: float, rows: Sequence[Mapping[str, Any]],
                 window_seconds: float, title: str = "") -> Figure:
    """The signal (top) and every output column of ``rows`` over time (bottom): a step over
    each window or tagged position, a dot per beat. Rows without a number in a column
    (skipped windows) leave a gap.

    Args:
        signal: the recording's samples at ``sample_rate`` Hz (non-finite drawn as gaps).
        rows: the window/position/beat rows of one recording.
        window_seconds: a window's length, for rows that give only their start.
    """
    columns = output_columns(rows)
    fig = Figure(figsize=(10, 4.6), layout="constrained")
    ax, axo = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [2, 1.4]})
    x = finite_or_nan(np.asarray(signal, dtype=np.float64))
    ax.plot(np.arange(len(x)) / sample_rate, x, color="0.15", linewidth=0.6)
    ax.set_ylim(*finite_limits(x))
    ax.set_ylabel("signal")
    spans = unreliable_row_spans(rows, window_seconds)
    shade_spans(ax, spans)
    shade_spans(axo, spans, legend=True)
    for k, column in enumerate(columns[:MAX_LINES]):
        style = {"color": f"C{k}", "label": column}
        for row in rows:
            value = row.get(column)
            if value is None or not np.isfinite(float(value)):
                continue
            span = _span(row, window_seconds)
            if span is None:  # a beat: a point at its time
                axo.plot([float(row["time_s"])], [float(value)], "o", markersize=3, **style)
            else:
                axo.hlines(float(value), *span, linewidth=2, **style)
            style = {"color": style["color"]}  # one legend entry per column
    if columns:
        shown = columns[:MAX_LINES]
        more = f" (+{len(columns) - MAX_LINES} more in the table)" if len(columns) > MAX_LINES \
            else ""
        axo.set_ylabel(shown[0] if len(shown) == 1 else "outputs")
        axo.legend(fontsize=7, loc="upper right", ncols=min(4, len(shown)),
                   title=more or None, title_fontsize=7)
    else:
        axo.text(0.5, 0.5, "no per-window numbers to draw (see the table)", ha="center",
                 va="center", transform=axo.transAxes, fontsize=8)
        if spans:
            axo.legend(fontsize=7, loc="upper right")
    axo.set_xlabel("time (s)")
    fig.suptitle(title, fontsize=10)
    return fig
