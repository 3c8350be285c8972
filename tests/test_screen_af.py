"""AF screening: released parity through the screen_af code path, windows, skipped windows."""

from __future__ import annotations

import json

import numpy as np
import pytest

from heartgpt.data.readers import read_signal
from heartgpt.data.signal_quality import load_trust
from heartgpt.inference.af_screening import (
    af_probabilities,
    index_ranges,
    screen_af,
    window_starts,
    write_csv,
)
from heartgpt.inference.window_trust import trust_context
from heartgpt.model import GPT
from heartgpt.model.checkpoints import load_model
from tiny import tiny_gpt


@pytest.fixture(scope="module")
def tiny() -> GPT:
    return tiny_gpt(out_features=1)


def ppg_like(n: int, rate: float = 50.0, seed: int = 0) -> np.ndarray:
    t = np.arange(n) / rate
    rng = np.random.default_rng(seed)
    return np.sin(2 * np.pi * 1.1 * t) + 0.3 * np.sin(4 * np.pi * 1.1 * t) + 0.05 * rng.normal(size=n)


@pytest.mark.shared
@pytest.mark.parametrize(("name", "weights", "rate"), [
    ("ECG_AFib1", "ECGPT_AF_1k_iters", 100), ("PPG_AFib", "PPGPT_AF_1k_iters", 50)])
def test_released_af_probability(name, weights, rate, weights_dir, reference_dir,
                                 example_inputs_dir):
    ref = np.load(reference_dir / f"example_context_{name}.npz")
    loaded = load_model(weights_dir / f"{weights}.zip")
    signal = read_signal(example_inputs_dir / f"example_context_{name}.csv")
    np.testing.assert_array_equal(signal, ref["signal"])
    result = screen_af(loaded.model, signal, rate, loaded.modality)
    assert len(result.starts) == 1 and not result.skipped  # 500 samples: one window, the GUI's
    assert result.probs[0] == pytest.approx(float(ref["af_prob"]), abs=1e-5)
    assert result.recording_prob == pytest.approx(float(ref["af_prob"]), abs=1e-5)
    assert result.fraction_above == 1.0
    # with the trust checks the tools run by default: the same probability, judged reliable
    # (a released file stores no temperature and no OOD reference: nothing rescales it)
    trusted = screen_af(loaded.model, signal, rate, loaded.modality,
                        trust=trust_context(loaded, load_trust()))
    assert trusted.raw_probs is None and trusted.trust.reliable.all()
    assert trusted.recording_prob == pytest.approx(float(ref["af_prob"]), abs=1e-5)
    assert trusted.summary()["ood_available"] is False


def test_window_starts_cover_the_end():
    np.testing.assert_array_equal(window_starts(500, 500, 50), [0])
    np.testing.assert_array_equal(window_starts(600, 500, 50), [0, 50, 100])
    np.testing.assert_array_equal(window_starts(620, 500, 50), [0, 50, 100, 120])
    with pytest.raises(ValueError, match="too short"):
        window_starts(499, 500, 50)
    np.testing.assert_array_equal(window_starts(620, 500, 50, "drop"), [0, 50, 100])
    np.testing.assert_array_equal(window_starts(500, 500, 50, "drop"), [0])  # the GUI's window
    with pytest.raises(ValueError, match="tail"):
        window_starts(620, 500, 50, "pad")


def test_index_ranges():
    assert index_ranges(np.array([0, 1, 2, 5, 7, 8])) == "0-2, 5, 7-8"
    assert index_ranges(np.array([3])) == "3" and index_ranges(np.array([], int)) == ""


def test_the_tail_window_is_flagged_and_the_summary_names_what_it_averages(tiny, tmp_path):
    x = ppg_like(300)  # windows of 64 every 20: 0..220, and 236 ending at the last sample
    align = screen_af(tiny, x, 50.0, "ppg", stride=20)
    assert align.overlaps_previous.tolist() == [False] * 12 + [True]
    d = align.to_dict()
    assert (d["tail"], d["tail_window"], d["tail_window_averaged"]) == ("align", 12, True)
    assert (d["averaged_windows"], d["n_averaged"], d["uncovered_end_samples"]) == ("0-12", 13, 0)
    assert [w["overlaps_previous"] for w in d["windows"]] == [False] * 12 + [True]
    assert "incl. the end-aligned tail #12" in align.averaged_text()
    rows = write_csv(tmp_path / "af.csv", align).read_text().splitlines()
    assert rows[0].endswith(",status,overlaps_previous")
    assert [r.rsplit(",", 1)[1] for r in rows[1:]] == ["0"] * 12 + ["1"]
    drop = screen_af(tiny, x, 50.0, "ppg", stride=20, tail="drop")
    np.testing.assert_array_equal(drop.starts, align.starts[:12])
    np.testing.assert_allclose(drop.probs, align.probs[:12], atol=1e-6)
    assert drop.recording_prob == pytest.approx(align.probs[:12].mean())  # equal weights
    d = drop.to_dict()
    assert (d["tail"], d["tail_window"], d["uncovered_end_samples"]) == ("drop", None, 16)
    assert d["averaged_windows"] == "0-11" and not drop.overlaps_previous.any()
    assert drop.averaged_text() == "mean of 12 windows"


def test_windows_are_tokenised_on_their_own(tiny):
    x = ppg_like(300)
    result = screen_af(tiny, x, 50.0, "ppg", stride=20, batch_size=4)
    np.testing.assert_array_equal(result.starts, [*range(0, 237, 20), 236])
    from heartgpt.data.tokenizer import tokenize_window

    tokens = np.stack([tokenize_window(x[s : s + 64]) for s in result.starts])
    np.testing.assert_allclose(result.probs, af_probabilities(tiny, tokens), atol=1e-6)
    # the batch size does not change the numbers
    np.testing.assert_allclose(screen_af(tiny, x, 50.0, "ppg", stride=20, batch_size=64).probs,
                               result.probs, atol=1e-6)
    assert result.recording_prob == pytest.approx(result.probs.mean())


def test_resamples_to_the_modality_rate(tiny):
    x = ppg_like(250, rate=125.0)  # 2 s at 125 Hz -> 100 samples at 50 Hz
    result = screen_af(tiny, x, 125.0, "ppg", stride=10)
    assert len(result.signal) == 100 and result.sample_rate == 50.0


def test_unusable_windows_are_skipped_and_reported(tiny, tmp_path):
    x = ppg_like(200)
    x[10:12] = np.nan  # spoils windows starting at 0 and 10
    x[120:200] = 1.0  # flat: windows starting at 120, 130 and the end-aligned 136
    result = screen_af(tiny, x, 50.0, "ppg", stride=10)
    assert set(result.skipped) == {0, 1, 12, 13, 14}
    assert "NaN" in result.skipped[0] and "flat" in result.skipped[12]
    assert np.isnan(result.probs[[0, 1, 12, 13, 14]]).all()
    assert np.isfinite(result.probs[2:12]).all()
    assert result.recording_prob == pytest.approx(np.nanmean(result.probs))
    d = result.to_dict()
    json.dumps(d)
    assert d["n_skipped"] == 5 and d["windows"][0]["af_prob"] is None
    assert d["averaged_windows"] == "2-11" and not d["tail_window_averaged"]
    rows = write_csv(tmp_path / "af.csv", result).read_text().splitlines()
    assert rows[0].startswith("window,start_sample") and "skipped" in rows[1]
    with pytest.raises(ValueError, match="no usable window"):
        screen_af(tiny, np.ones(200), 50.0, "ppg")
