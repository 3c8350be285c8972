"""Look inside a HeartGPT model: attention, homonym tokens, attention shift, exports.

* :func:`trace_tokens` runs :meth:`GPT.inspect` on one context: logits, the residual stream at
  every depth (embedding + each block's output, before ``ln_f``) and every head's post-softmax
  attention, as numpy arrays (:class:`Trace`); :func:`save_trace` writes them to ``.npz``.
* Attention: every head of a layer as a (query x key) map; the paper's aggregate view (a
  layer's heads summed, the row of one query, default the last token); and
  :func:`folded_attention`, each query's attention folded over the previous cardiac cycles
  (lag modulo the cardiac period, :func:`estimate_period`) and averaged over queries: a peak
  at lag 0 means the model looks at the same phase of earlier beats.
* :func:`homonyms`: tokens of the same value on the rising and on the falling edge of the
  waveform; the cosine similarity of their hidden vectors at every depth. Same-phase pairs stay
  similar while the two phases drift apart deeper in the model (the paper's vector-similarity
  figure).
* :func:`attention_shift`: the last layer's head-summed attention row of the last token, a
  fine-tuned model minus its base (the AF GUI's view).

Every function takes a :class:`GPT` and tokens and returns arrays; the figures are in
:mod:`heartgpt.inference.plots`, so a training callback can call :func:`attention_figures` and log them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from scipy.signal import find_peaks

from heartgpt.data.tokenizer import Modality, tokenize_context
from heartgpt.inference.loading import eval_mode, model_device
from heartgpt.model import GPT


@dataclass
class Trace:
    """One context through the model (batch of one)."""

    tokens: np.ndarray  # (T,) int64
    logits: np.ndarray  # (T, n_out) float32
    hidden_states: np.ndarray  # (n_layer + 1, T, C) float32: embedding, then each block's output
    attentions: np.ndarray  # (n_layer, nh, T, T) float32, [layer, head, query, key]


def trace_tokens(model: GPT, tokens: np.ndarray | torch.Tensor) -> Trace:
    """Run one context (T,) through :meth:`GPT.inspect` (eval mode, no gradients)."""
    x = torch.as_tensor(np.asarray(tokens), dtype=torch.long, device=model_device(model))
    x = x.reshape(1, -1)  # (1, T)
    with eval_mode(model):
        tr = model.inspect(x)
    return Trace(
        x[0].cpu().numpy(),
        tr.logits[0].float().cpu().numpy(),  # (T, n_out)
        tr.hidden_states[:, 0].float().cpu().numpy(),  # (L + 1, T, C)
        tr.attentions[:, 0].float().cpu().numpy(),  # (L, nh, T, T)
    )


def trace_signal(
    model: GPT, signal: np.ndarray, sample_rate: float, modality: str | Modality
) -> Trace:
    """Tokenise a raw context as the released GUIs do (last ``block_size`` samples at the
    modality rate) and trace it."""
    return trace_tokens(model, tokenize_context(signal, sample_rate, modality,
                                                model.config.block_size))


def save_trace(
    path: str | Path,
    trace: Trace,
    layers: list[int] | None = None,
    **extra: np.ndarray | float | str,
) -> Path:
    """Write a trace as a compressed ``.npz``: ``tokens``, ``logits``, ``hidden_states``,
    ``attentions`` (only ``layers``, all by default; ``attention_layers`` says which), plus
    ``extra`` arrays (e.g. ``sample_rate``)."""
    path = Path(path)
    layers = list(range(len(trace.attentions))) if layers is None else layers
    np.savez_compressed(
        path, tokens=trace.tokens, logits=trace.logits, hidden_states=trace.hidden_states,
        attentions=trace.attentions[layers], attention_layers=np.asarray(layers, dtype=np.int64),
        **{k: np.asarray(v) for k, v in extra.items()},
    )
    return path


# ------------------------------------------------------------------------------- attention
def aggregate_attention(attentions: np.ndarray, query: int = -1) -> np.ndarray:
    """The paper's aggregate view: heads summed, row of ``query``: (L, nh, T, T) -> (L, T)."""
    return attentions[:, :, query, :].sum(axis=1)


def estimate_period(
    x: np.ndarray, sample_rate: float, min_bpm: float = 30.0, max_bpm: float = 220.0
) -> int:
    """Cardiac period in samples: the first strong autocorrelation peak in the heart-rate range.

    "Strong" is at least 0.8 of the highest peak in range, so the period is not mistaken for
    a multiple of it.
    """
    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean()
    lo = max(1, int(sample_rate * 60.0 / max_bpm))
    hi = min(len(x) - 1, int(np.ceil(sample_rate * 60.0 / min_bpm)))
    if hi <= lo or not x.any():
        raise ValueError(f"cannot estimate a cardiac period from {len(x)} samples")
    ac = np.correlate(x, x, mode="full")[len(x) - 1 :] / (x @ x)  # (n,) lags 0..n-1
    ac = ac / (1.0 - np.arange(len(x)) / len(x))  # unbiased: fewer pairs at long lags
    peaks, _ = find_peaks(ac[: hi + 1])
    peaks = peaks[peaks >= lo]
    if not len(peaks):
        return int(lo + np.argmax(ac[lo : hi + 1]))
    strong = peaks[ac[peaks] >= 0.8 * ac[peaks].max()]
    return int(strong[0])


def folded_attention(attentions: np.ndarray, period: int) -> tuple[np.ndarray, np.ndarray]:
    """Attention on previous cardiac cycles, folded by phase and averaged over queries.

    For each query ``q`` (from ``period`` on) only keys of earlier cycles count, ``k <= q -
    period``; their attention (heads averaged) is summed by lag modulo the period, ``(q - k) %
    period``, normalised to a distribution over the ``period`` lags and averaged over queries.
    Multiplied by ``period``, so 1 everywhere means no preference; a peak at lag 0 means the
    model looks at the same phase of earlier beats.

    Args:
        attentions: (L, nh, T, T).
        period: cardiac period in samples (:func:`estimate_period`).

    Returns:
        ``(folded, previous)``: (L, period) relative attention by lag, and (L,) the mean
        fraction of each query's attention that goes to previous cycles at all.
    """
    L, _, T, _ = attentions.shape
    if not 1 <= period < T:
        raise ValueError(f"period must be in 1..{T - 1}, got {period}")
    att = attentions.mean(axis=1)  # (L, T, T)
    q, k = np.tril_indices(T, k=-period)  # key at least one period before the query
    lag = (q - k) % period
    row = q - period  # queries period..T-1 -> rows 0..T-period-1
    n_q = T - period
    folded, previous = np.zeros((L, period)), np.zeros(L)
    for layer in range(L):
        w = att[layer, q, k].astype(np.float64)
        per_query = np.bincount(row * period + lag, weights=w, minlength=n_q * period)
        per_query = per_query.reshape(n_q, period)  # (queries, lags)
        total = per_query.sum(axis=1, keepdims=True)  # (queries, 1)
        folded[layer] = (per_query / np.where(total > 0, total, 1)).mean(axis=0) * period
        previous[layer] = total.mean()
    return folded, previous


def attention_shift(
    base: GPT, tuned: GPT, tokens: np.ndarray, layer: int = -1, query: int = -1
) -> np.ndarray:
    """Head-summed attention row of ``query`` in ``layer``: ``tuned`` minus ``base`` -> (T,)."""
    cb, ct = base.config, tuned.config
    if (cb.vocab_size, cb.block_size, cb.n_layer, cb.n_head) != (
            ct.vocab_size, ct.block_size, ct.n_layer, ct.n_head):
        raise ValueError("base and fine-tuned models differ in shape (vocab, block size, layers "
                         "or heads); compare a fine-tune with its own base")
    rows = [aggregate_attention(trace_tokens(m, tokens).attentions[[layer]], query)[0]
            for m in (tuned, base)]  # each (T,)
    return (rows[0].astype(np.float64) - rows[1]).astype(np.float64)


# ------------------------------------------------------------------------------- homonyms
@dataclass
class Homonyms:
    """Same-value tokens split by the phase of the waveform they sit on."""

    value: int
    positions: np.ndarray  # (n,) token positions holding ``value``
    labels: np.ndarray  # (n,) 'rising' / 'falling'
    similarity: np.ndarray  # (L + 1, n, n) cosine similarity at every depth
    within: np.ndarray  # (L + 1,) mean over distinct same-phase pairs
    across: np.ndarray  # (L + 1,) mean over rising-falling pairs


def _phases(tokens: np.ndarray) -> np.ndarray:
    """+1 on a rising edge, -1 on a falling one, 0 where flat (central differences)."""
    return np.sign(np.gradient(tokens.astype(np.float64))).astype(np.int64)


def pick_homonym_value(tokens: np.ndarray, min_per_phase: int = 2) -> int:
    """The token value with the most occurrences on both edges (ties: closest to 50)."""
    phase = _phases(tokens)
    values = np.arange(int(tokens.max()) + 1)
    up = np.bincount(tokens[phase > 0], minlength=len(values))[: len(values)]
    down = np.bincount(tokens[phase < 0], minlength=len(values))[: len(values)]
    score = np.minimum(up, down)
    if score.max() < min_per_phase:
        raise ValueError(f"no token value occurs {min_per_phase}+ times on both rising and "
                         "falling edges of this context; pass a token value")
    best = np.flatnonzero(score == score.max())
    return int(best[np.argmin(np.abs(best - 50))])


def homonyms(hidden_states: np.ndarray, tokens: np.ndarray, value: int | None = None,
             min_per_phase: int = 2) -> Homonyms:
    """Cosine similarity, at every depth, of the hidden vectors of tokens equal to ``value``.

    Args:
        hidden_states: (L + 1, T, C), e.g. ``Trace.hidden_states``.
        tokens: (T,) the context.
        value: the token value (default: :func:`pick_homonym_value`).
        min_per_phase: occurrences needed on each edge.
    """
    tokens = np.asarray(tokens)
    value = pick_homonym_value(tokens, min_per_phase) if value is None else int(value)
    phase = _phases(tokens)
    pos = np.flatnonzero((tokens == value) & (phase != 0))
    labels = np.where(phase[pos] > 0, "rising", "falling")
    counts = {k: int((labels == k).sum()) for k in ("rising", "falling")}
    if min(counts.values()) < min_per_phase:
        raise ValueError(f"token value {value} occurs {counts['rising']} times rising and "
                         f"{counts['falling']} falling; need {min_per_phase} of each")
    h = hidden_states[:, pos].astype(np.float64)  # (L + 1, n, C)
    h = h / np.linalg.norm(h, axis=-1, keepdims=True)
    sim = h @ h.transpose(0, 2, 1)  # (L + 1, n, n)
    same = labels[:, None] == labels[None, :]
    off_diag = ~np.eye(len(pos), dtype=bool)
    return Homonyms(value, pos, labels, sim, sim[:, same & off_diag].mean(axis=1),
                    sim[:, ~same].mean(axis=1))


# ------------------------------------------------------------------------------- figures
def attention_figures(
    trace: Trace, sample_rate: float, layers: list[int] | None = None, query: int = -1,
    title: str = "",
) -> dict[str, Figure]:
    """Figures of a trace by name: ``attention_layer{l}`` (heads of each of ``layers``),
    ``attention_aggregate`` and ``attention_folded``. For a training callback too."""
    from heartgpt.inference.plots import (
        plot_aggregate_attention,
        plot_attention_heads,
        plot_folded_attention,
    )

    layers = list(range(len(trace.attentions))) if layers is None else layers
    figs = {f"attention_layer{i}": plot_attention_heads(
        trace.attentions[i], i, title=f"{title} layer {i}: attention of every head".strip())
        for i in layers}
    T = len(trace.tokens)
    q = query % T
    figs["attention_aggregate"] = plot_aggregate_attention(
        trace.tokens, aggregate_attention(trace.attentions, q), sample_rate, q,
        title=f"{title} attention of position {q}, heads summed, per layer".strip())
    period = estimate_period(trace.tokens, sample_rate)
    folded, previous = folded_attention(trace.attentions, period)
    figs["attention_folded"] = plot_folded_attention(
        folded, previous, period, sample_rate,
        title=f"{title} attention on previous cycles by phase (period {period} samples = "
              f"{period / sample_rate:.2f} s), mean over queries".strip())
    return figs
