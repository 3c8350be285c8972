"""Beat detection: released parity, tail handling, streaming equals all-at-once."""

from __future__ import annotations

import json

import numpy as np
import pytest

from heartgpt.data.readers import read_signal
from heartgpt.data.tokenizer import tokenize_window
from heartgpt.inference.beat_detection import (
    _OverlapAverage,
    _WindowStream,
    beat_confidence_stream,
    beat_outputs,
    detect_beats,
    heart_rate,
    quality_category,
    write_beats_csv,
    write_beats_json,
)
from heartgpt.model import GPT
from heartgpt.model.checkpoints import load_model
from tiny import tiny_gpt

LONG = "example_context_PPG_beat_detect_long_input"



@pytest.fixture(scope="module")
def tiny() -> GPT:
    return tiny_gpt(out_features=1)


@pytest.fixture(scope="module")
def released(weights_dir, reference_dir, example_inputs_dir):
    model = load_model(weights_dir / "PPGPT_beat_5k_iters.zip").model
    return model, np.load(reference_dir / f"{LONG}.npz"), example_inputs_dir / f"{LONG}.csv"


def ppg_like(n: int, seed: int = 0) -> np.ndarray:
    t = np.arange(n) / 50.0
    rng = np.random.default_rng(seed)
    return np.sin(2 * np.pi * 1.2 * t) ** 3 + 0.05 * rng.normal(size=n)


@pytest.mark.shared
def test_release_tail_reproduces_the_reference(released):
    model, ref, csv = released
    beats = detect_beats(model, read_signal(csv), 50.0, "ppg", tail="release")
    assert beats.n_windows == 71 and not beats.skipped
    np.testing.assert_array_equal(beats.peaks, ref["peaks"])
    np.testing.assert_allclose(beats.confidence, ref["beat_confidence"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(beats.heights, ref["peak_heights"], rtol=0, atol=1e-5)
    assert beats.median_height == pytest.approx(float(ref["median_peak_height"]), abs=1e-5)
    assert beats.category == str(ref["confidence_category"]) == "High"


@pytest.mark.shared
def test_align_tail_differs_only_in_the_last_window(released):
    model, ref, csv = released
    beats = detect_beats(model, read_signal(csv), 50.0, "ppg")  # tail="align"
    n = len(ref["signal"])
    assert beats.n_windows == 66 + 1  # full windows at 0..6500, plus one ending at 7000
    head = slice(0, n - 500)  # samples before the aligned window [6501, 7001)
    np.testing.assert_allclose(beats.confidence[head], ref["beat_confidence"][head], atol=1e-5)
    assert len(beats.peaks) == len(ref["peaks"]) == 150  # the same beats ...
    assert np.abs(beats.peaks - ref["peaks"]).max() <= 1  # ... two of them one sample later
    assert beats.category == "High"


@pytest.mark.parametrize("tail", ["align", "release"])
def test_streaming_equals_all_at_once(tiny, tail):
    x = ppg_like(1003)
    whole = np.concatenate(list(beat_confidence_stream(tiny, [x], shift=16, batch_size=5,
                                                       tail=tail)))
    rng = np.random.default_rng(1)
    cuts = np.sort(rng.choice(np.arange(1, len(x)), 12, replace=False))
    chunks = np.split(x, cuts)
    pieces = list(beat_confidence_stream(tiny, iter(chunks), shift=16, batch_size=5, tail=tail))
    assert len(pieces) > 2  # it did yield before the end
    np.testing.assert_array_equal(np.concatenate(pieces), whole)
    assert len(whole) == len(x)
    a = detect_beats(tiny, x, 50.0, shift=16, batch_size=5, tail=tail)
    b = detect_beats(tiny, x, 50.0, shift=16, batch_size=5, tail=tail, chunk_size=37)
    np.testing.assert_array_equal(a.confidence, b.confidence)
    np.testing.assert_array_equal(a.peaks, b.peaks)


@pytest.mark.parametrize("tail", ["align", "release"])
def test_progress_hook_reports_without_changing_the_result(tiny, tail):
    x = ppg_like(2500)  # at 125 Hz: 1000 samples at the PPG rate
    x[900:1000] = np.nan  # some windows skipped (align) or zeroed (release)
    seen: list[tuple[int, int]] = []
    got = detect_beats(tiny, x, 125.0, shift=16, batch_size=5, tail=tail, chunk_size=150,
                       progress=lambda done, total: seen.append((done, total)))
    ref = detect_beats(tiny, x, 125.0, shift=16, batch_size=5, tail=tail)
    np.testing.assert_array_equal(got.confidence, ref.confidence)
    np.testing.assert_array_equal(got.peaks, ref.peaks)
    assert got.skipped == ref.skipped and got.n_windows == ref.n_windows
    done = [d for d, _ in seen]
    assert len(seen) > 5 and done == sorted(set(done))  # increasing, one call a batch
    assert seen[-1] == (1000, 1000) and {total for _, total in seen} == {1000}


def test_stitching_is_the_overlap_average(tiny):
    x = ppg_like(300)
    starts = [*range(0, 300 - 64 + 1, 16), 300 - 64]  # 0..224 and the end-aligned 236
    outs = beat_outputs(tiny, np.stack([tokenize_window(x[s : s + 64]) for s in starts]))
    acc, cnt = np.zeros(300), np.zeros(300)
    for s, o in zip(starts, outs, strict=True):
        acc[s : s + 64] += o
        cnt[s : s + 64] += 1
    got = detect_beats(tiny, x, 50.0, shift=16).confidence
    np.testing.assert_allclose(got, acc / cnt, atol=1e-12)


def test_window_stream_starts():
    def starts(n, tail, chunk=7):
        stream = _WindowStream((np.arange(n)[i : i + chunk] for i in range(0, n, chunk)), 10, 4,
                               tail)
        got = [(s, len(w), float(w[0])) for s, w in stream]
        assert stream.n_samples == n
        assert all(first == s for s, _, first in got)  # each window holds its own samples
        return [s for s, _, _ in got], [length for _, length, _ in got]

    assert starts(18, "align") == ([0, 4, 8], [10, 10, 10])  # 8 + 10 = 18: ends at the end
    assert starts(19, "align") == ([0, 4, 8, 9], [10] * 4)  # one more, aligned to the end
    assert starts(19, "release") == ([0, 4, 8, 12, 16], [10, 10, 10, 7, 3])
    assert starts(5, "release") == ([0, 4], [5, 1])
    with pytest.raises(ValueError, match="too short"):
        starts(9, "align")


def test_unusable_windows(tiny):
    x = ppg_like(400)
    x[100:110] = np.nan
    skipped: dict[int, str] = {}
    conf = np.concatenate(list(beat_confidence_stream(tiny, [x], shift=32, skipped=skipped)))
    assert sorted(skipped) == [64, 96]  # the windows holding samples 100..109
    assert all("NaN" in why for why in skipped.values())
    uncovered = np.zeros(400, dtype=bool)
    uncovered[96:128] = True  # only the two skipped windows cover these samples
    assert np.isnan(conf[uncovered]).all() and np.isfinite(conf[~uncovered]).all()
    x[96:200] = np.nan
    beats = detect_beats(tiny, x, 50.0, shift=32)
    assert np.isnan(beats.confidence[96:200]).all()  # no usable window: NaN, and no beat there
    assert not ((beats.peaks >= 96) & (beats.peaks < 200)).any()
    release = detect_beats(tiny, x, 50.0, shift=32, tail="release")  # zeros, as released
    assert not release.skipped and np.isfinite(release.confidence).all()
    with pytest.raises(ValueError, match="no usable window"):
        detect_beats(tiny, np.full(300, 2.0), 50.0, shift=32)
    with pytest.raises(ValueError, match="too short"):
        detect_beats(tiny, ppg_like(50), 50.0, shift=32)


def test_overlap_average_pop():
    acc = _OverlapAverage()
    acc.add(0, np.ones(4))
    acc.add(2, 3 * np.ones(4))
    np.testing.assert_array_equal(acc.pop(3), [1, 1, 2])
    np.testing.assert_array_equal(acc.pop(8), [2, 3, 3, np.nan, np.nan])


def test_quality_category_and_csv(tiny, tmp_path):
    assert [quality_category(h) for h in (0.1, 0.2051, 0.4, 0.4598, 0.9, float("nan"))] == [
        "Low", "Medium", "Medium", "High", "High", "Low"]
    beats = detect_beats(tiny, ppg_like(500, seed=2), 50.0, shift=16)
    rows = write_beats_csv(tmp_path / "b.csv", beats, input_rate=125.0).read_text().splitlines()
    assert rows[0] == "beat,sample,input_sample,time_s,confidence,quality"
    assert len(rows) == len(beats.peaks) + 1


def test_heart_rate_from_inter_beat_intervals():
    peaks = np.array([0, 50, 100, 160, 400, 450])  # at 50 Hz: intervals 1, 1, 1.2, 4.8, 1 s
    conf = np.zeros(500)
    conf[200:300] = np.nan  # no usable window here: the 4.8-s interval may hide beats
    hr = heart_rate(peaks, 50.0, conf)
    assert hr["n_intervals"] == 4 and hr["intervals_excluded"] == 1
    assert hr["median_bpm"] == pytest.approx(60.0)
    assert hr["mean_bpm"] == pytest.approx(60 / 1.05)
    every = heart_rate(peaks, 50.0)  # without the confidence every interval counts
    assert every["n_intervals"] == 5 and every["mean_bpm"] == pytest.approx(60 / 1.8)
    assert heart_rate(np.array([7]), 50.0) == {"median_bpm": None, "mean_bpm": None,
                                               "n_intervals": 0, "intervals_excluded": 0}


def test_beats_json_summary(tiny, tmp_path):
    x = ppg_like(600, seed=3)
    x[300:310] = np.nan  # some windows skipped
    beats = detect_beats(tiny, x, 50.0, shift=16)
    assert beats.skipped
    path = write_beats_json(tmp_path / "b.json", beats, "in/rec.csv", "ckpt.safetensors")

    def no_nan(name: str) -> None:
        raise AssertionError(f"{name} in the JSON")

    s = json.loads(path.read_text(), parse_constant=no_nan)  # strict JSON: no NaN / Infinity
    assert s["recording"] == "in/rec.csv" and s["checkpoint"] == "ckpt.safetensors"
    assert s["n_beats"] == len(beats.peaks) and s["quality"] == beats.category
    assert s["median_confidence"] == pytest.approx(beats.median_height)
    assert s["duration_s"] == pytest.approx(12.0) and s["sample_rate_hz"] == 50.0
    assert s["windows_skipped"] == len(beats.skipped) and s["n_windows"] == beats.n_windows
    assert s["skipped"][0]["start_sample"] == next(iter(beats.skipped))
    assert s["heart_rate"] == heart_rate(beats.peaks, 50.0, beats.confidence)
    assert set(s["heart_rate"]) == {"median_bpm", "mean_bpm", "n_intervals",
                                    "intervals_excluded"}
