"""Tokeniser: bit-exact with the released code on the example inputs, loud on bad windows."""

from __future__ import annotations

import numpy as np
import pytest

from heartgpt.data.tokenizer import (
    get_modality,
    resample,
    sliding_windows,
    tokenize_context,
    tokenize_window,
)

CONTEXTS = {
    "example_context_ECG": "ecg",
    "example_context_PPG": "ppg",
    "example_context_ECG_AFib1": "ecg",
    "example_context_PPG_AFib": "ppg",
}


@pytest.mark.shared
@pytest.mark.parametrize("name", sorted(CONTEXTS))
def test_tokens_match_released(name, example_inputs_dir, reference_dir):
    modality = get_modality(CONTEXTS[name])
    signal = np.loadtxt(example_inputs_dir / f"{name}.csv", delimiter=",")
    ref = np.load(reference_dir / f"{name}.npz")
    tokens = tokenize_context(signal, modality.sample_rate, modality)
    assert tokens.dtype == np.int64
    np.testing.assert_array_equal(tokens, ref["tokens"])


def test_scale_endpoints_and_rounding():
    tokens = tokenize_window(np.array([2.0, 4.0, 3.0, 2.01, 3.995]))
    np.testing.assert_array_equal(tokens, [0, 100, 50, 0, 100])
    # numpy rounds half to even, as the release does: 0.5 -> 0, 1.5 -> 2
    tokens = tokenize_window(np.array([0.0, 0.005, 0.015, 1.0]))
    np.testing.assert_array_equal(tokens, [0, 0, 2, 100])


def test_long_context_keeps_last_window():
    rng = np.random.default_rng(0)
    x = rng.normal(size=800)
    np.testing.assert_array_equal(tokenize_context(x, 50, "ppg"), tokenize_window(x[-500:]))


@pytest.mark.parametrize(
    ("window", "message"),
    [
        (np.array([1.0, np.nan, 2.0]), "NaN/inf"),
        (np.array([1.0, np.inf, 2.0]), "NaN/inf"),
        (np.full(10, 3.3), "flat window"),
        (np.array([]), "empty"),
        (np.ones((2, 3)), "1-D"),
        (np.array([-1.7e308, 0.0, 1.7e308]), "too large to scale"),  # max - min overflows
    ],
)
def test_bad_windows_raise(window, message):
    with pytest.raises(ValueError, match=message):
        tokenize_window(window)


def test_too_short_window_raises():
    with pytest.raises(ValueError, match="too short: 10 samples, need 500"):
        tokenize_window(np.arange(10.0), length=500)


@pytest.mark.parametrize("rate", [0, -100, float("nan")])
def test_bad_sample_rate_raises(rate):
    with pytest.raises(ValueError, match="sampling rate"):
        resample(np.arange(100.0), rate, 100)


def test_resample_lengths_and_content():
    t = np.arange(5000) / 500.0
    x = np.sin(2 * np.pi * 1.2 * t)  # 10 s of a 1.2 Hz sine at 500 Hz
    y = resample(x, 500, 100)
    assert y.shape == (1000,)
    np.testing.assert_allclose(y[50:-50], np.sin(2 * np.pi * 1.2 * t[::5])[50:-50], atol=1e-3)
    assert resample(np.arange(250.0), 125, 50).shape == (100,)  # MIMIC PERform 125 Hz -> PPG
    assert resample(x, 100, 100) is not None


def test_modalities():
    assert get_modality("ECG").sample_rate == 100 and get_modality("ecg").vocab_size == 101
    assert get_modality("ppg").sample_rate == 50 and get_modality("ppg").vocab_size == 102
    with pytest.raises(ValueError, match="unknown modality"):
        get_modality("eeg")


def test_sliding_windows():
    np.testing.assert_array_equal(sliding_windows(1000, 500, 250), [0, 250, 500])
    assert sliding_windows(499, 500, 50).size == 0


@pytest.mark.parametrize("rate_in,rate_out", [(500, 100), (360, 100), (125, 50), (256, 100),
                                              (1000, 50), (62.5, 50), (30, 50)])
def test_resample_filter_designed_once_equals_scipys_own(rate_in, rate_out):
    from fractions import Fraction

    from scipy.signal import resample_poly

    x = np.random.default_rng(0).normal(size=3 * int(rate_in))
    r = Fraction(rate_out / rate_in).limit_denominator(1000)
    expected = resample_poly(x, r.numerator, r.denominator)  # scipy designs the filter itself
    assert np.array_equal(resample(x, rate_in, rate_out), expected)
    assert np.array_equal(resample(x, rate_in, rate_out), expected)  # cached filter unchanged
