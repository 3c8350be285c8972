"""Generate ECG/PPG continuations with a pre-trained HeartGPT model.

A context of any length and sampling rate is tokenised as the released GUIs do (resampled to
the modality rate, the last ``block_size`` samples); continuations are sampled after it.

Two modes:

* ``exact`` (default): the released loop (:meth:`GPT.generate`): every step re-runs the model
  on the last ``block_size`` tokens, positions re-indexed from 0.
* ``cached``: :meth:`GPT.generate_cached`, a KV cache. Identical logits while the context and
  the new tokens fit in ``block_size``; once the window is full it is an approximation: the
  cache is rebuilt from the last ``block_size - stride`` tokens, so each token is predicted from
  ``block_size - stride`` to ``block_size - 1`` previous tokens instead of ``block_size - 1``.

See ``docs/generation.md`` for how close the cached samples' statistics are to exact mode's
(:func:`sample_statistics`, :func:`compare_modes`) and the speed of each.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from heartgpt.data.tokenizer import LEVELS, Modality, get_modality, tokenize_context
from heartgpt.inference.loading import eval_mode, model_device
from heartgpt.model import GPT

MODES = ("exact", "cached")

# progress(done, total, tokens): tokens generated so far per sample, max_new_tokens, and those
# tokens, (num_samples, done) int64
GenerationProgress = Callable[[int, int, np.ndarray], None]


@dataclass
class Generation:
    """Context tokens and the continuations sampled after them."""

    context: np.ndarray  # (T,) int64
    samples: np.ndarray  # (S, N) int64, one row a sample
    sample_rate: float  # Hz of the tokens (the modality rate)
    mode: str
    seconds: float  # wall time of the sampling


def generate_tokens(
    model: GPT,
    context: np.ndarray | torch.Tensor,
    max_new_tokens: int,
    *,
    num_samples: int = 1,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int | None = None,
    mode: str = "exact",
    stride: int | None = None,
    progress: GenerationProgress | None = None,
    progress_every: int | None = None,
) -> np.ndarray:
    """Sample ``num_samples`` continuations of one context in a single batch.

    Args:
        model: a pre-trained (language-model head) GPT; put in eval mode for the call.
        context: (T,) tokens; only the last ``block_size`` are used.
        max_new_tokens: tokens to generate per sample.
        num_samples: rows of the batch.
        temperature, top_k: sampling controls (``top_k=None``: the whole vocabulary).
        seed: seeds a dedicated generator (``None``: torch's global RNG).
        mode: ``"exact"`` or ``"cached"`` (see the module docstring).
        stride: cached mode's re-encode stride (1..block_size; default ``block_size // 5``).
        progress: called as ``progress(done, total, tokens)`` with the tokens generated so far
            per sample, ``max_new_tokens`` and those tokens, (num_samples, done) int64 (for a
            progress bar, or a plot that grows). Exact mode then samples in chunks of
            ``progress_every`` tokens, one report after each, with the same seeded generator
            throughout: the result equals that of a call without ``progress``. Cached mode
            reports once, at the end (splitting it would move where its cache restarts). A
            ``progress`` that raises stops the generation.
        progress_every: tokens between exact-mode reports (default: about 100 reports).

    Returns:
        (num_samples, max_new_tokens) int64 tokens.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if max_new_tokens < 1 or num_samples < 1:
        raise ValueError(f"need max_new_tokens >= 1 and num_samples >= 1, got {max_new_tokens} "
                         f"and {num_samples}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    device = model_device(model)
    ctx = torch.as_tensor(np.asarray(context), dtype=torch.long, device=device).reshape(-1)
    if ctx.numel() == 0:
        raise ValueError("empty context")
    if int(ctx.max()) >= model.config.vocab_size or int(ctx.min()) < 0:
        raise ValueError(f"context tokens must be in 0..{model.config.vocab_size - 1}")
    idx = ctx[-model.config.block_size :].expand(num_samples, -1)  # (S, T)
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    kwargs = dict(temperature=temperature, top_k=top_k, generator=generator)

    def new_tokens(out: torch.Tensor) -> np.ndarray:
        return out[:, idx.size(1) :].cpu().numpy().astype(np.int64)  # (S, done)

    with eval_mode(model):
        if mode == "cached":
            out = model.generate_cached(idx, max_new_tokens, stride=stride, **kwargs)
        elif progress is None:
            out = model.generate(idx, max_new_tokens, **kwargs)  # (S, T + N)
        else:  # chunks of one random stream; each step still sees the last block_size tokens
            every = (math.ceil(max_new_tokens / 100) if progress_every is None
                     else progress_every)
            if every < 1:
                raise ValueError(f"progress_every must be >= 1, got {every}")
            out = idx
            for done in range(every, max_new_tokens, every):  # every chunk but the last
                out = model.generate(out, every, **kwargs)  # (S, T + done)
                progress(done, max_new_tokens, new_tokens(out))
            out = model.generate(out, idx.size(1) + max_new_tokens - out.size(1), **kwargs)
    samples = new_tokens(out)  # (S, N)
    if progress is not None:
        progress(max_new_tokens, max_new_tokens, samples)
    return samples


def generate_from_signal(
    model: GPT,
    signal: np.ndarray,
    sample_rate: float,
    modality: str | Modality,
    max_new_tokens: int,
    **kwargs,
) -> Generation:
    """Tokenise a raw context (resampled to the modality rate) and sample continuations.

    ``kwargs`` go to :func:`generate_tokens`.
    """
    mod = get_modality(modality) if isinstance(modality, str) else modality
    context = tokenize_context(signal, sample_rate, mod, model.config.block_size)
    t0 = time.perf_counter()
    samples = generate_tokens(model, context, max_new_tokens, **kwargs)
    return Generation(context, samples, mod.sample_rate, kwargs.get("mode", "exact"),
                      time.perf_counter() - t0)


# ------------------------------------------------------------------------------- statistics
def _autocorr(x: np.ndarray, lag: int) -> float:
    x = x - x.mean()
    denom = float((x * x).sum())
    return float((x[:-lag] * x[lag:]).sum() / denom) if denom > 0 and 0 < lag < len(x) else 0.0


def sample_statistics(samples: np.ndarray, period: int, sample_rate: float) -> dict[str, float]:
    """Summary of generated tokens (S, N), each statistic as mean and sd over the samples.

    ``mean``/``std`` of the tokens, ``autocorr`` at ``period`` (the context's cardiac period, in
    samples), ``period`` (each sample's own, :func:`heartgpt.inference.interpretability.estimate_period`), and
    ``hist``, the pooled token histogram (0..101).
    """
    from heartgpt.inference.interpretability import estimate_period

    samples = np.atleast_2d(samples)
    x = samples.astype(np.float64)
    per_sample = {
        "mean": x.mean(axis=1),
        "std": x.std(axis=1),
        "autocorr": np.array([_autocorr(s, period) for s in x]),
        "period": np.array([estimate_period(s, sample_rate) if s.std() > 0 else np.nan
                            for s in x], dtype=np.float64),
    }
    out: dict = {}
    for name, v in per_sample.items():
        out[name] = float(np.nanmean(v))
        out[f"{name}_sd"] = float(np.nanstd(v))
    hist = np.bincount(samples.astype(np.int64).ravel(), minlength=LEVELS + 2)[: LEVELS + 2]
    out["hist"] = hist / hist.sum()
    return out


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    """Total-variation distance between two histograms (0: equal, 1: disjoint)."""
    return 0.5 * float(np.abs(np.asarray(p) - np.asarray(q)).sum())


def compare_modes(
    model: GPT,
    context: np.ndarray,
    sample_rate: float,
    *,
    strides: tuple[int, ...] = (100,),
    num_samples: int = 8,
    max_new_tokens: int = 500,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Statistics of exact-mode samples, of a second exact run and of cached runs per stride.

    The second exact run (another seed) is the sampling-noise floor: cached mode is as close
    as it can be when its distances to exact are about those of exact to exact. Each run's
    entry holds :func:`sample_statistics` (without the histogram), ``tv_to_exact`` (total
    variation between its pooled token histogram and the first exact run's) and ``seconds``.
    """
    from heartgpt.inference.interpretability import estimate_period

    period = estimate_period(context, sample_rate)
    plan = [("exact", "exact", None), ("exact_b", "exact", None),
            *((f"cached_stride{s}", "cached", s) for s in strides)]
    runs: dict[str, dict] = {"context": {"period": float(period)}}
    for i, (name, mode, stride) in enumerate(plan):
        t0 = time.perf_counter()
        out = generate_tokens(model, context, max_new_tokens, num_samples=num_samples,
                              seed=seed + i, mode=mode, stride=stride)
        runs[name] = {**sample_statistics(out, period, sample_rate),
                      "seconds": time.perf_counter() - t0}
    for name in runs:
        if name != "context":
            runs[name]["tv_to_exact"] = total_variation(runs[name]["hist"], runs["exact"]["hist"])
    for r in runs.values():
        r.pop("hist", None)
    return runs


def write_tokens_csv(path: str | Path, samples: np.ndarray) -> Path:
    """One row per generated step, one column per sample (``step,sample_0,...``)."""
    path = Path(path)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", *(f"sample_{i}" for i in range(len(samples)))])
        for step, row in enumerate(np.asarray(samples).T):
            w.writerow([step, *row.tolist()])
    return path
