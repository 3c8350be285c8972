"""What the figures say: colour-bar labels and the beat counts of the beats figure."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.figure import Figure

from heartgpt.inference.beat_detection import Beats, beats_title
from heartgpt.inference.interpretability import attention_figures, attention_shift, trace_tokens
from heartgpt.inference.plots import (
    ZOOM_SECONDS,
    duration_text,
    plot_af,
    plot_attention_shift,
    plot_beats,
    save_figure,
)
from tiny import tiny_gpt


def colorbar_labels(fig: Figure) -> list[str]:
    """The label of every colour bar left on ``fig`` (matplotlib names their axes so)."""
    return [ax.get_ylabel() or ax.get_xlabel() for ax in fig.axes
            if ax.get_label() == "<colorbar>"]


@pytest.fixture(scope="module")
def attention_figs() -> dict[str, Figure]:
    model = tiny_gpt(101)
    phase = (np.arange(64) / 12.8) % 1.0
    tokens = np.round(100 * np.where(phase < 0.3, phase / 0.3, 1 - (phase - 0.3) / 0.7))
    tokens = tokens.astype(np.int64)
    figs = attention_figures(trace_tokens(model, tokens), 50.0, layers=[0, 1])
    shift = attention_shift(model, tiny_gpt(101, out_features=1), tokens)
    figs["attention_shift"] = plot_attention_shift(tokens, shift, 50.0)
    return figs


@pytest.mark.parametrize("name", ["attention_layer0", "attention_layer1", "attention_aggregate",
                                  "attention_folded", "attention_shift"])
def test_every_attention_colour_bar_is_labelled(attention_figs, name):
    labels = colorbar_labels(attention_figs[name])
    assert labels, "no colour bar"
    assert all("attention" in label for label in labels), labels


def test_aggregate_view_labels_the_colour_bar_of_every_layer(attention_figs):
    labels = colorbar_labels(attention_figs["attention_aggregate"])
    assert len(labels) == 2  # one per layer
    assert all(" ".join(label.split()) == "attention weight" for label in labels), labels


def beats_of(seconds: float, rate: float = 50.0, period: float = 2.0) -> Beats:
    n = int(seconds * rate)
    signal = np.sin(2 * np.pi * np.arange(n) / (period * rate))
    peaks = np.arange(int(period * rate / 4), n, int(period * rate))
    confidence = np.zeros(n)
    confidence[peaks] = 0.9
    return Beats(signal, rate, confidence, peaks, confidence[peaks], n_windows=1)


def legend_texts(fig: Figure) -> list[str]:
    return [t.get_text() for ax in fig.axes if ax.get_legend() is not None
            for t in ax.get_legend().get_texts()]


def test_beats_legend_counts_the_view_and_the_title_the_recording():
    beats = beats_of(300.0)  # one beat every 2 s: 150 beats, 15 in a 30-s view
    assert len(beats.peaks) == 150
    title = beats_title("rec.csv", beats)
    assert title.startswith("rec.csv: 150 beats in 300 s, median confidence 0.900")
    fig = plot_beats(beats.signal, beats.confidence, beats.peaks, beats.sample_rate,
                     start=int(60 * beats.sample_rate), length=int(30 * beats.sample_rate),
                     title=title)
    assert legend_texts(fig) == ["beats (15 in this 30-s view)"]
    assert fig.get_suptitle() == title
    # the whole of a long recording would be a solid band: an overview and the first 30 s
    whole = plot_beats(beats.signal, beats.confidence, beats.peaks, beats.sample_rate)
    assert legend_texts(whole) == ["beats (15 in this 30-s view)"]
    assert [ax.get_label() for ax in whole.axes][:2] == ["overview", "zoom"]
    short = beats_of(40.0)  # up to a minute the whole recording is readable
    whole = plot_beats(short.signal, short.confidence, short.peaks, short.sample_rate)
    assert legend_texts(whole) == ["beats (20 in the whole 40-s recording)"]


def test_beats_view_past_the_end_counts_what_is_shown():
    beats = beats_of(40.0)  # beats at 0.5, 2.5, ... 38.5 s; a 30-s view from 25 s shows 15 s
    fig = plot_beats(beats.signal, beats.confidence, beats.peaks, beats.sample_rate,
                     start=int(25 * beats.sample_rate), length=int(30 * beats.sample_rate))
    assert legend_texts(fig) == ["beats (7 in this 15-s view)"]


def test_duration_text():
    assert [duration_text(s) for s in (300.0, 30, 8.52, 0.04)] == ["300", "30", "8.5", "0.04"]


# ------------------------------------------------------------------------------- long, non-finite
def named_axis(fig: Figure, label: str):
    """The one axis of ``fig`` named ``label`` (``ax.set_label``)."""
    found = [ax for ax in fig.axes if ax.get_label() == label]
    assert len(found) == 1, [ax.get_label() for ax in fig.axes]
    return found[0]


def af_windows(n: int, window: int = 500, stride: int = 50) -> tuple[np.ndarray, np.ndarray]:
    starts = np.arange(0, n - window + 1, stride)  # (W,)
    return starts, np.linspace(0.0, 1.0, len(starts))


def x_span(ax) -> float:
    lo, hi = ax.get_xlim()
    return hi - lo


def test_ten_minutes_of_af_get_an_overview_and_a_readable_zoom():
    rate = 50.0
    signal = beats_of(600.0, rate).signal  # (30000,)
    starts, probs = af_windows(len(signal))
    fig = plot_af(signal, rate, starts, 500, probs)
    overview, zoom = named_axis(fig, "overview"), named_axis(fig, "zoom")
    assert overview.get_xlim()[0] <= 0 and overview.get_xlim()[1] >= 600
    assert x_span(named_axis(fig, "probability")) >= 600  # every window's P(AF)
    assert x_span(zoom) <= ZOOM_SECONDS + 1e-9 and zoom.get_xlim()[0] <= 0
    later = plot_af(signal, rate, starts, 500, probs, zoom_start=int(120 * rate),
                    zoom_length=int(10 * rate))
    assert named_axis(later, "zoom").get_xlim() == pytest.approx((120, 130), abs=0.02)
    starts, probs = af_windows(1500)
    short = plot_af(signal[:1500], rate, starts, 500, probs)  # 30 s: the two-row figure
    assert not [ax for ax in short.axes if ax.get_label() == "overview"]
    assert x_span(named_axis(short, "signal")) == pytest.approx(30.0)


def test_ten_minutes_of_beats_get_an_overview_and_a_readable_zoom():
    beats = beats_of(600.0)
    fig = plot_beats(beats.signal, beats.confidence, beats.peaks, beats.sample_rate)
    overview, zoom = named_axis(fig, "overview"), named_axis(fig, "zoom")
    assert overview.get_xlim()[0] <= 0 and overview.get_xlim()[1] >= 600
    assert x_span(zoom) <= ZOOM_SECONDS + 1e-9
    view = plot_beats(beats.signal, beats.confidence, beats.peaks, beats.sample_rate,
                      start=int(100 * beats.sample_rate), length=int(20 * beats.sample_rate))
    assert named_axis(view, "zoom").get_xlim() == pytest.approx((100, 120))
    assert legend_texts(view) == ["beats (10 in this 20-s view)"]


def with_non_finite_runs(x: np.ndarray) -> np.ndarray:
    x = x.copy()
    x[100:150], x[300:320], x[700:800], x[-5:] = np.inf, -np.inf, np.nan, np.inf
    return x


@pytest.mark.parametrize("seconds", [20.0, 120.0])
def test_non_finite_samples_are_gaps_in_the_figures(tmp_path, seconds):
    beats = beats_of(seconds)
    x = with_non_finite_runs(beats.signal)
    starts, probs = af_windows(len(x))
    probs[starts < 800] = np.nan  # the windows holding bad samples were skipped
    figs = {"af": plot_af(x, beats.sample_rate, starts, 500, probs),
            "beats": plot_beats(x, beats.confidence, beats.peaks, beats.sample_rate)}
    for name, fig in figs.items():
        for ax in fig.axes:
            assert np.isfinite(ax.get_ylim()).all() and np.isfinite(ax.get_xlim()).all(), name
        assert save_figure(fig, tmp_path / f"{name}.png").stat().st_size > 0


def test_any_models_outputs_are_drawn_over_the_time_they_describe():
    """The Apply tab's figure: a step per window (or tagged position) per output column, a dot
    per beat; where a row is (window, times, status, predicted class) is not drawn."""
    from heartgpt.inference.output_plots import output_columns, plot_outputs

    windows = [{"window": 0, "start_s": 0.0, "end_s": 5.0, "status": "ok", "prob_sinus": 0.8,
                "prob_af": 0.2, "predicted": "sinus"},
               {"window": 1, "start_s": 5.0, "end_s": 10.0, "status": "skipped: flat"},
               {"window": 2, "start_s": 10.0, "status": "ok", "prob_sinus": 0.3,
                "prob_af": 0.7, "predicted": "af"}]
    assert output_columns(windows) == ["prob_sinus", "prob_af"]
    fig = plot_outputs(np.sin(np.arange(1500) / 10), 100.0, windows, window_seconds=5.0)
    outputs = fig.axes[1]
    assert [t.get_text() for t in outputs.get_legend().get_texts()] == ["prob_sinus", "prob_af"]
    spans = sorted(tuple(np.round(seg[:, 0], 6)) for c in outputs.collections
                   for seg in c.get_segments())
    assert spans == [(0.0, 5.0), (0.0, 5.0), (10.0, 15.0), (10.0, 15.0)]  # no start_s: +5 s
    beats = [{"beat": 0, "time_s": 0.8, "confidence": 0.9, "quality": "good"},
             {"beat": 1, "time_s": 1.7, "confidence": 0.6, "quality": "fair"}]
    points = plot_outputs(np.sin(np.arange(500) / 10), 100.0, beats, 5.0).axes[1].lines
    assert [tuple(line.get_xdata()) for line in points] == [(0.8,), (1.7,)]


def hatched_spans(ax) -> list[tuple[float, float]]:
    """The x spans (s) of the hatched (unreliable) patches of ``ax``."""
    return sorted((round(p.get_x(), 6), round(p.get_x() + p.get_width(), 6))
                  for p in ax.patches if p.get_hatch() == "//")


def legend_of(ax) -> list[str]:
    legend = ax.get_legend()
    return [t.get_text() for t in legend.get_texts()] if legend is not None else []


@pytest.mark.parametrize("seconds", [30.0, 120.0])
def test_unreliable_windows_are_hatched_grey_with_a_legend_entry(seconds):
    rate = 50.0
    signal = beats_of(seconds, rate).signal
    starts, probs = af_windows(len(signal), stride=500)  # 10-s windows side by side
    unreliable = np.zeros(len(starts), dtype=bool)
    unreliable[[1, 2]] = True  # 10-30 s, one span
    fig = plot_af(signal, rate, starts, 500, probs, unreliable=unreliable)
    names = ["signal", "probability"] if seconds < 60 else ["overview", "probability", "zoom"]
    for name in names:
        assert hatched_spans(named_axis(fig, name)) == [(10.0, 30.0)], name
    assert "unreliable" in legend_of(named_axis(fig, "probability"))
    plain = plot_af(signal, rate, starts, 500, probs)
    assert not any(hatched_spans(ax) for ax in plain.axes)
    assert "unreliable" not in legend_of(named_axis(plain, "probability"))
    with pytest.raises(ValueError, match="flags for"):
        plot_af(signal, rate, starts, 500, probs, unreliable=unreliable[:-1])


def test_apply_figure_hatches_rows_that_are_not_reliable():
    from heartgpt.inference.output_plots import plot_outputs

    rows = [{"window": 0, "start_s": 0.0, "end_s": 5.0, "prob_af": 0.2, "reliable": True},
            {"window": 1, "start_s": 5.0, "end_s": 10.0, "prob_af": 0.9, "reliable": False},
            {"window": 2, "start_s": 10.0, "end_s": 15.0, "prob_af": 0.4, "reliable": True}]
    fig = plot_outputs(np.sin(np.arange(1500) / 10), 100.0, rows, window_seconds=5.0)
    assert [hatched_spans(ax) for ax in fig.axes[:2]] == [[(5.0, 10.0)]] * 2
    assert legend_of(fig.axes[1]) == ["unreliable", "prob_af"]
    for row in rows:
        row.pop("reliable")
    assert not hatched_spans(plot_outputs(np.zeros(1500), 100.0, rows, 5.0).axes[1])
