"""Interpretability: released attention / hidden states / attention shift, folding, homonyms."""

from __future__ import annotations

import numpy as np
import pytest

from heartgpt.data.readers import read_signal
from heartgpt.inference.interpretability import (
    aggregate_attention,
    attention_figures,
    attention_shift,
    estimate_period,
    folded_attention,
    homonyms,
    pick_homonym_value,
    save_trace,
    trace_signal,
    trace_tokens,
)
from heartgpt.model import GPT
from heartgpt.model.checkpoints import load_model
from tiny import tiny_gpt


def tiny(**overrides) -> GPT:
    return tiny_gpt(101, **overrides)  # ECG


def wave(n: int, period: float) -> np.ndarray:
    """A PPG-like shape: fast rise, slow fall, tokens 0..100."""
    phase = (np.arange(n) / period) % 1.0
    x = np.where(phase < 0.3, phase / 0.3, 1 - (phase - 0.3) / 0.7)
    return np.round(100 * x).astype(np.int64)


@pytest.mark.shared
@pytest.mark.parametrize(("name", "base", "tuned", "rate"), [
    ("ECG", "ECGPT_560k_iters", None, 100),
    ("PPG", "PPGPT_500k_iters", None, 50),
    ("ECG_AFib1", "ECGPT_560k_iters", "ECGPT_AF_1k_iters", 100),
    ("PPG_AFib", "PPGPT_500k_iters", "PPGPT_AF_1k_iters", 50),
])
def test_released_attention_and_hidden_states(name, base, tuned, rate, weights_dir,
                                              reference_dir, example_inputs_dir):
    ref = np.load(reference_dir / f"example_context_{name}.npz")
    model = load_model(weights_dir / f"{base}.zip").model
    signal = read_signal(example_inputs_dir / f"example_context_{name}.csv")
    trace = trace_signal(model, signal, rate, name[:3].lower())
    np.testing.assert_array_equal(trace.tokens, ref["tokens"])
    np.testing.assert_allclose(trace.attentions[-1], ref["attn_last_layer"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(trace.hidden_states, ref["hidden_states"], atol=5e-5, rtol=1e-5)
    np.testing.assert_allclose(trace.logits, ref["logits"], atol=1e-4, rtol=1e-5)
    if tuned is None:
        return
    tuned_model = load_model(weights_dir / f"{tuned}.zip").model
    tuned_trace = trace_tokens(tuned_model, trace.tokens)
    np.testing.assert_allclose(tuned_trace.attentions[-1], ref["af_attn_last_layer"], atol=1e-5,
                               rtol=0)
    want = (ref["af_attn_last_layer"][:, -1].sum(0).astype(np.float64)
            - ref["attn_last_layer"][:, -1].sum(0))  # the AF GUI's view
    np.testing.assert_allclose(attention_shift(model, tuned_model, trace.tokens), want,
                               atol=1e-5, rtol=0)


def test_trace_shapes_and_export(tmp_path):
    model = tiny()
    tokens = wave(50, 12.5)
    trace = trace_tokens(model, tokens)
    assert trace.hidden_states.shape == (3, 50, 32)
    assert trace.attentions.shape == (2, 4, 50, 50)
    assert trace.logits.shape == (50, 101)
    np.testing.assert_allclose(trace.attentions.sum(-1), 1.0, atol=1e-5)
    path = save_trace(tmp_path / "t.npz", trace, layers=[1], sample_rate=50.0)
    with np.load(path) as z:
        np.testing.assert_array_equal(z["tokens"], tokens)
        np.testing.assert_array_equal(z["attentions"], trace.attentions[[1]])
        np.testing.assert_array_equal(z["attention_layers"], [1])
        np.testing.assert_array_equal(z["hidden_states"], trace.hidden_states)
        assert float(z["sample_rate"]) == 50.0
    assert aggregate_attention(trace.attentions).shape == (2, 50)


def test_estimate_period():
    assert estimate_period(wave(500, 46), 50.0) == 46
    assert estimate_period(wave(500, 79.3), 100.0) in (79, 80)
    x = np.sin(2 * np.pi * np.arange(500) / 60) + 0.9 * np.sin(4 * np.pi * np.arange(500) / 60)
    assert estimate_period(x, 50.0) == 60  # not the half period of the strong harmonic
    with pytest.raises(ValueError, match="period"):
        estimate_period(np.ones(500), 50.0)


def test_folded_attention():
    T, P = 200, 20
    att = np.zeros((2, 1, T, T))
    for q in range(T):  # layer 0: the same phase one cycle back; layer 1: the previous token
        att[0, 0, q, q - P if q >= P else q] = 1.0
        att[1, 0, q, max(q - 1, 0)] = 1.0
    folded, previous = folded_attention(att, P)
    assert folded.shape == (2, P)
    np.testing.assert_allclose(folded.mean(axis=1)[0], 1.0)  # relative to uniform
    assert folded[0, 0] == pytest.approx(P) and folded[0, 1:].sum() == 0
    np.testing.assert_allclose(previous, [1.0, 0.0])
    assert folded[1].sum() == 0  # no attention on earlier cycles at all
    with pytest.raises(ValueError, match="period"):
        folded_attention(att, T)


def test_homonyms_separate_by_phase():
    tokens = wave(200, 25)
    phase = np.sign(np.gradient(tokens.astype(float)))
    rng = np.random.default_rng(0)
    base = rng.normal(size=(1, 200, 16))
    drift = np.linspace(0, 3, 3)[:, None, None] * phase[None, :, None] * rng.normal(size=(1, 1, 16))
    hidden = base + drift  # depth 0: phases alike; deeper: the phase direction dominates
    value = pick_homonym_value(tokens)
    res = homonyms(hidden, tokens, value)
    assert set(res.labels) == {"rising", "falling"}
    assert (tokens[res.positions] == value).all()
    assert res.similarity.shape == (3, len(res.positions), len(res.positions))
    assert abs(res.within[0] - res.across[0]) < 0.1
    assert res.within[-1] > 0.9 and res.across[-1] < -0.5
    with pytest.raises(ValueError, match="times rising"):
        homonyms(hidden, tokens, value=100)


def test_attention_figures_for_a_training_callback():
    model = tiny().train()
    tokens = wave(64, 12.8)
    trace = trace_tokens(model, tokens)
    assert model.training  # the caller's mode is restored
    figs = attention_figures(trace, 50.0, layers=[0])
    assert set(figs) == {"attention_layer0", "attention_aggregate", "attention_folded"}
    assert all(fig.axes for fig in figs.values())
    shift = attention_shift(model, tiny(out_features=1), tokens)
    assert shift.shape == (64,) and abs(shift.sum()) < 1e-5  # both rows sum to n_head
    with pytest.raises(ValueError, match="differ in shape"):
        attention_shift(model, tiny(n_head=2), tokens)
