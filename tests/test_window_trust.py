"""The trust layer where a model is applied: each window's reliability, the recording's numbers
over the reliable windows only (and saying so), calibrated probabilities beside the raw ones,
and the rhythm cross-check that flags an AF call over regular beats.

A tiny 500-sample GPT whose head is a constant makes the model's answer known; the signals are
the app's synthetic demo recordings (100 Hz ECG), so the rhythm is known too."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from heartgpt.app.demos import DEMOS, demo_signal
from heartgpt.data.signal_quality import load_trust
from heartgpt.data.tokenizer import tokenize_window
from heartgpt.inference.af_screening import screen_af
from heartgpt.inference.window_trust import TrustContext
from tiny import tiny_gpt

SINUS = "synthetic ECG, sinus rhythm (60 s)"
AF = "synthetic ECG, AF-like rhythm (60 s)"
RATE = DEMOS[SINUS].sample_rate  # both at the demo's native rate (resampled to 100 Hz)


def constant_af_model(logit: float) -> torch.nn.Module:
    """A 1-output model whose P(AF) is sigmoid(``logit``) for every window."""
    model = tiny_gpt(vocab_size=101, block_size=500, out_features=1)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.fill_(logit)
    return model


@pytest.fixture(scope="module")
def trust() -> TrustContext:
    return TrustContext(load_trust())


def test_an_af_call_over_regular_beats_is_a_disagreement(trust):
    sinus = np.asarray(demo_signal(SINUS), dtype=np.float64)
    says_af = screen_af(constant_af_model(4.0), sinus, RATE, "ecg", stride=500, trust=trust)
    assert says_af.rhythm_verdict == "regular"
    assert says_af.recording_disagreement.startswith("model says AF")
    summary = says_af.summary()
    assert summary["disagreement"] == says_af.recording_disagreement
    assert summary["rhythm_heart_rate_bpm"] == pytest.approx(68, abs=3)  # the demo's 68 bpm
    says_sinus = screen_af(constant_af_model(-4.0), sinus, RATE, "ecg", stride=500, trust=trust)
    assert says_sinus.recording_disagreement == ""
    # the flag switched off (no 'regular' verdict): no disagreement
    rhythm = dataclasses.replace(trust.settings.rhythm, regular_max={})
    off = TrustContext(dataclasses.replace(trust.settings, rhythm=rhythm))
    assert screen_af(constant_af_model(4.0), sinus, RATE, "ecg", stride=500,
                     trust=off).recording_disagreement == ""


def test_a_sinus_call_over_irregular_beats_is_a_disagreement(trust):
    af = np.asarray(demo_signal(AF), dtype=np.float64)
    res = screen_af(constant_af_model(-4.0), af, RATE, "ecg", stride=500, trust=trust)
    assert res.rhythm_verdict == "irregular"
    assert res.recording_disagreement.startswith("model says sinus")
    rows = res.window_rows()
    assert {"rhythm_cv", "rhythm_cosen", "disagreement", "reliable"} <= set(rows[0])


def test_unreliable_windows_keep_their_number_but_leave_the_headline(trust):
    """Noise over a third of a sinus recording: those windows are unreliable with a reason;
    the recording's P(AF) is the mean over the others and says over how many it stands."""
    x = np.asarray(demo_signal(SINUS), dtype=np.float64).copy()
    rng = np.random.default_rng(0)
    noisy = int(20 * RATE)  # the first 20 s: windows 0-3 of 500 samples at 100 Hz
    x[:noisy] = rng.standard_normal(noisy) * np.ptp(x) / 4
    model = tiny_gpt(vocab_size=101, block_size=500, out_features=1)  # differs per window
    res = screen_af(model, x, RATE, "ecg", stride=500, tail="drop", trust=trust)
    reliable = res.trust.reliable
    assert not reliable[:4].any() and reliable[4:].all()
    assert all(r for r in res.trust.reasons[:4])  # each with its reason
    assert res.recording_prob == pytest.approx(res.probs[4:].mean())
    assert np.isfinite(res.probs[:4]).all()  # their own numbers stay
    summary = res.summary()
    assert summary["n_reliable"] == 8 and summary["n_unreliable"] == 4
    assert "over 8 of 12 windows" not in summary["headline"]  # the tool's own wording:
    assert "mean of 8 reliable windows of 12; 4 unreliable:" in summary["headline"]
    bare = screen_af(model, x, RATE, "ecg", stride=500, tail="drop")
    assert bare.recording_prob == pytest.approx(res.probs.mean())  # without checks: all


def test_a_stored_temperature_calibrates_and_keeps_the_raw_probability(trust):
    x = np.asarray(demo_signal(SINUS), dtype=np.float64)
    model = constant_af_model(2.0)
    calibrated = screen_af(model, x, RATE, "ecg", stride=500,
                           trust=dataclasses.replace(trust, temperature=2.0))
    p_raw, p_cal = 1 / (1 + np.exp(-2.0)), 1 / (1 + np.exp(-1.0))
    np.testing.assert_allclose(calibrated.raw_probs, p_raw, rtol=1e-6)
    np.testing.assert_allclose(calibrated.probs, p_cal, rtol=1e-6)
    row = calibrated.window_rows()[0]
    assert row["af_prob"] == pytest.approx(p_cal) and row["af_prob_raw"] == pytest.approx(p_raw)
    summary = calibrated.summary()
    assert summary["temperature"] == 2.0
    assert summary["recording_af_prob_raw"] == pytest.approx(p_raw)
    uncalibrated = screen_af(model, x, RATE, "ecg", stride=500, trust=trust)
    assert uncalibrated.raw_probs is None and "temperature" not in uncalibrated.summary()


def test_windows_past_the_ood_threshold_are_unreliable(trust):
    x = np.asarray(demo_signal(SINUS), dtype=np.float64)
    model = constant_af_model(0.0)
    far = dataclasses.replace(trust, ood=lambda tokens: np.where(tokens[:, 0] >= 0, 99.0, 0.0),
                              ood_threshold=10.0)
    res = screen_af(model, x, RATE, "ecg", stride=500, trust=far)
    assert not res.trust.reliable.any()
    assert all("out of distribution" in r for r in res.trust.reasons)
    assert "NONE reliable" in res.summary()["headline"]
    assert res.window_rows()[0]["ood_score"] == 99.0
    near = dataclasses.replace(far, ood=lambda tokens: np.zeros(len(tokens)))
    assert screen_af(model, x, RATE, "ecg", stride=500, trust=near).trust.reliable.all()


def test_the_ood_score_comes_from_the_scoring_pass(trust, tmp_path):
    """With a model holding a reference, ``screen_af`` reads each window's OOD distance off the
    hidden states its probabilities came from (one forward pass): the same distances as a
    separate pass, and the same probabilities as without the checks."""
    from heartgpt.heads.calibration import fit_ood_reference
    from heartgpt.inference.window_trust import trust_context
    from heartgpt.model.checkpoints import load_model
    from heartgpt.model.safetensors_file import save_safetensors

    model = tiny_gpt(vocab_size=101, block_size=500, out_features=1)
    path = save_safetensors(model, tmp_path / "af.safetensors", modality="ecg", task="af")
    rng = np.random.default_rng(0)
    tokens = torch.as_tensor(rng.integers(0, 101, (24, 500)))
    with torch.no_grad():
        features = model.hidden(tokens).mean(dim=1)
    reference = fit_ood_reference(features[:16], features[16:], [0.5, 0.99], 0.99, None, "mean")
    loaded = dataclasses.replace(load_model(path), ood_reference=reference)
    context = trust_context(loaded, trust.settings)
    assert context.ood_hidden is not None

    def no_second_pass(tokens: np.ndarray) -> np.ndarray:
        raise AssertionError("a second forward pass for the OOD score")

    x = np.asarray(demo_signal(SINUS), dtype=np.float64)
    res = screen_af(loaded.model, x, RATE, "ecg", stride=500,
                    trust=dataclasses.replace(context, ood=no_second_pass))
    windows = np.stack([tokenize_window(res.signal[s : s + 500]) for s in res.starts])
    np.testing.assert_allclose(res.trust.ood, context.ood(windows), rtol=1e-6)
    bare = screen_af(loaded.model, x, RATE, "ecg", stride=500)
    np.testing.assert_array_equal(res.probs, bare.probs)
