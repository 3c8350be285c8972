"""What the figures say: colour-bar labels and the beat counts of the beats figure."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.figure import Figure

from heartgpt.inference.beat_detection import Beats, beats_title
from heartgpt.inference.interpretability import attention_figures, attention_shift, trace_tokens
from heartgpt.inference.plots import duration_text, plot_attention_shift, plot_beats
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
    whole = plot_beats(beats.signal, beats.confidence, beats.peaks, beats.sample_rate)
    assert legend_texts(whole) == ["beats (150 in the whole 300-s recording)"]


def test_beats_view_past_the_end_counts_what_is_shown():
    beats = beats_of(40.0)  # beats at 0.5, 2.5, ... 38.5 s; a 30-s view from 25 s shows 15 s
    fig = plot_beats(beats.signal, beats.confidence, beats.peaks, beats.sample_rate,
                     start=int(25 * beats.sample_rate), length=int(30 * beats.sample_rate))
    assert legend_texts(fig) == ["beats (7 in this 15-s view)"]


def test_duration_text():
    assert [duration_text(s) for s in (300.0, 30, 8.52, 0.04)] == ["300", "30", "8.5", "0.04"]
