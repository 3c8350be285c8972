"""Detect heart beats in a finger-PPG recording of any length with the HeartGPT beat model.

The procedure of the released beat-detection GUI: windows of ``block_size`` (500) samples every
``shift`` (100) samples, each tokenised on its own, run through the beat model in batches of up
to 150; the per-token sigmoid outputs are overlap-averaged ("stitched", float64) into a
per-sample beat confidence; beats are ``find_peaks(conf, height=0.015, width=(None, 20),
distance=14)``; the median peak height grades the signal quality Low (< 0.2051) <= Medium
(< 0.4598) <= High. With the released beat model it reproduces the reference outputs exactly
(``tail="release"``).

The end of the recording (``tail``):

* ``"align"`` (default): only full windows. Windows start at 0, shift, 2 shift, ... while they
  fit; if the last one does not end at the last sample, one more window is aligned to end
  there (the last 500 samples), so every sample is covered and no window is padded. Windows that
  cannot be tokenised (flat, NaN/inf) are skipped and reported; samples no usable window covers
  get confidence NaN (and no beat). A recording shorter than one window is an error.
* ``"release"``: the released behaviour, for parity: windows start at every multiple of
  ``shift`` below the length; a short tail window is tokenised on its own and zero-padded, and
  a window that cannot be tokenised becomes all zeros (which the model still reads, so the last
  sample of the reference example is averaged with the output of an all-zero window).

The two differ only near the end. On the reference example (7,001 samples) ``align`` changes
samples 6501..7000 (confidence by up to 0.090), finds the same 150 beats, two of them one
sample earlier (6868 and 6960 instead of 6869 and 6961), and a median peak height of 0.6543
instead of 0.6527 (High either way); ``release`` matches the reference within 6e-7.

Memory: :func:`beat_confidence_stream` reads the signal as an iterable of chunks and yields the
confidence as soon as no later window can change it; it holds at most one window plus one
chunk of signal and one batch of windows, so hours of recording stream in bounded memory.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from heartgpt.data.tokenizer import Modality, get_modality, resample, tokenize_window
from heartgpt.inference.af_screening import no_usable_window
from heartgpt.inference.beat_metrics import peak_beats
from heartgpt.inference.loading import eval_mode, model_device
from heartgpt.model import GPT

SHIFT = 100
BATCH_SIZE = 150
PEAK_HEIGHT = 0.015
PEAK_WIDTH = (None, 20)
PEAK_DISTANCE = 14
LOW_MEDIUM = 0.2051  # median peak height below: Low
MEDIUM_HIGH = 0.4598  # at or above: High
TAILS = ("align", "release")


def quality_category(height: float) -> str:
    """Signal quality from a (median) peak height: 'Low', 'Medium' or 'High' (NaN: 'Low')."""
    if not np.isfinite(height) or height < LOW_MEDIUM:
        return "Low"
    return "Medium" if height < MEDIUM_HIGH else "High"


@dataclass
class Beats:
    """Beat detection of one recording (indices at the modality rate)."""

    signal: np.ndarray  # (n,) float64 at the modality rate
    sample_rate: float
    confidence: np.ndarray  # (n,) float64; NaN where no usable window covers a sample
    peaks: np.ndarray  # (P,) int64
    heights: np.ndarray  # (P,) float64, confidence at the peaks
    n_windows: int  # windows run through the model (skipped ones excluded)
    skipped: dict[int, str] = field(default_factory=dict)  # window start -> reason
    tail: str = "align"

    @property
    def median_height(self) -> float:
        return float(np.median(self.heights)) if len(self.heights) else float("nan")

    @property
    def category(self) -> str:
        return quality_category(self.median_height)

    @property
    def seconds(self) -> float:
        """Length of the recording."""
        return len(self.signal) / self.sample_rate


def beats_title(name: str, beats: Beats) -> str:
    """The beats figure's title: the whole recording's count (the legend counts the view)."""
    from heartgpt.inference.plots import duration_text

    return (f"{name}: {len(beats.peaks)} beats in {duration_text(beats.seconds)} s, median "
            f"confidence {beats.median_height:.3f} ({beats.category} quality)")


# ------------------------------------------------------------------------------- windows
class _WindowStream:
    """Windows of a chunked signal in order of start: ``(start, samples)``; ``n_samples`` is set
    once the chunks are exhausted. Keeps only the samples a future window can still need."""

    def __init__(self, chunks: Iterable[np.ndarray], window: int, shift: int, tail: str) -> None:
        if tail not in TAILS:
            raise ValueError(f"tail must be one of {TAILS}, got {tail!r}")
        if not 1 <= shift <= window:
            raise ValueError(f"shift must be in 1..{window}, got {shift}")
        self.chunks, self.window, self.shift, self.tail = chunks, window, shift, tail
        self.n_samples: int | None = None

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        W, buf, buf_start, nxt, n = self.window, np.zeros(0), 0, 0, 0
        for chunk in self.chunks:
            chunk = np.asarray(chunk, dtype=np.float64).reshape(-1)
            buf = np.concatenate([buf, chunk])
            n += len(chunk)
            while nxt + W <= n:
                yield nxt, buf[nxt - buf_start : nxt - buf_start + W]
                nxt += self.shift
            keep_from = min(nxt, max(n - W, 0))  # the align tail may need the last W samples
            if keep_from > buf_start:
                buf, buf_start = buf[keep_from - buf_start :], keep_from
        self.n_samples = n
        if n == 0:
            raise ValueError("empty signal")
        if self.tail == "release":
            while nxt < n:
                yield nxt, buf[nxt - buf_start :]
                nxt += self.shift
            return
        if n < W:
            raise ValueError(f"recording too short: {n} samples at the modality rate, need at "
                             f"least {W} (one window)")
        if nxt - self.shift + W < n:  # the last full window stops short of the end
            yield n - W, buf[n - W - buf_start :]


def _tokens(samples: np.ndarray, window: int, tail: str) -> np.ndarray:
    """Tokens of one window; ``release``: failures become zeros and short windows are padded."""
    if tail == "align":
        return tokenize_window(samples, window)
    try:
        tok = tokenize_window(samples)
    except ValueError:
        tok = np.zeros(len(samples), dtype=np.int64)  # the release's NaN -> 0
    return np.pad(tok, (0, window - len(tok)))


class _OverlapAverage:
    """Running overlap-add of window outputs (float64) and of how many windows cover each
    sample; :meth:`pop` hands out the averages of samples no later window will touch."""

    def __init__(self) -> None:
        self.offset = 0  # absolute index of sums[0]
        self.sums = np.zeros(0)
        self.counts = np.zeros(0)

    def add(self, start: int, values: np.ndarray) -> None:
        lo, hi = start - self.offset, start - self.offset + len(values)
        if hi > len(self.sums):
            grow = hi - len(self.sums)
            self.sums = np.concatenate([self.sums, np.zeros(grow)])
            self.counts = np.concatenate([self.counts, np.zeros(grow)])
        self.sums[lo:hi] += values
        self.counts[lo:hi] += 1

    def pop(self, upto: int) -> np.ndarray:
        """Averages of samples [offset, upto); NaN where no window contributed."""
        k = upto - self.offset
        if k <= 0:
            return np.zeros(0)
        sums = np.pad(self.sums[:k], (0, max(0, k - len(self.sums))))
        counts = np.pad(self.counts[:k], (0, max(0, k - len(self.counts))))
        out = np.full(k, np.nan)
        np.divide(sums, counts, out=out, where=counts > 0)
        self.sums, self.counts, self.offset = self.sums[k:], self.counts[k:], upto
        return out


def beat_outputs(model: GPT, tokens: np.ndarray | torch.Tensor) -> np.ndarray:
    """Per-token beat probabilities ``sigmoid(head)`` of windows (B, T) -> (B, T) float32."""
    x = torch.as_tensor(np.asarray(tokens), dtype=torch.long, device=model_device(model))
    with eval_mode(model):
        out = torch.sigmoid(model(x)[..., 0])  # (B, T)
    return out.float().cpu().numpy()


def beat_confidence_stream(
    model: GPT,
    chunks: Iterable[np.ndarray],
    *,
    shift: int = SHIFT,
    batch_size: int = BATCH_SIZE,
    tail: str = "align",
    skipped: dict[int, str] | None = None,
    counter: list[int] | None = None,
) -> Iterator[np.ndarray]:
    """Stream the per-sample beat confidence of a signal given as chunks (modality rate).

    Yields consecutive pieces of the confidence track; their concatenation is the same for any
    chunking (windows are batched by count, not by chunk). Skipped windows (``align``) are
    recorded in ``skipped`` (start -> reason); ``counter[0]`` counts windows run.
    """
    window = model.config.block_size
    stream = _WindowStream(chunks, window, shift, tail)
    acc = _OverlapAverage()
    starts: list[int] = []
    batch: list[np.ndarray] = []
    skipped = {} if skipped is None else skipped

    def run() -> int:
        for s, out in zip(starts, beat_outputs(model, np.stack(batch)), strict=True):
            acc.add(s, out.astype(np.float64))
        if counter is not None:
            counter[0] += len(starts)
        last = starts[-1]
        starts.clear()
        batch.clear()
        return last

    for start, samples in stream:
        try:
            batch.append(_tokens(samples, window, tail))
        except ValueError as e:
            skipped[start] = str(e)
            continue
        starts.append(start)
        if len(batch) == batch_size:
            yield acc.pop(run() + 1)  # every later window starts after the batch's last
    if batch:
        run()
    yield acc.pop(stream.n_samples)


def find_beats(confidence: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Beat indices and heights of a confidence track, as the released GUI finds them."""
    conf = np.nan_to_num(confidence, nan=0.0).astype(np.float64)
    peaks = peak_beats(conf, PEAK_HEIGHT, PEAK_DISTANCE, max_width=PEAK_WIDTH[1])
    return peaks.astype(np.int64), conf[peaks]  # find_peaks' peak heights are the values there


def detect_beats(
    model: GPT,
    signal: np.ndarray,
    sample_rate: float,
    modality: str | Modality = "ppg",
    *,
    tail: str = "align",
    shift: int = SHIFT,
    batch_size: int = BATCH_SIZE,
    chunk_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Beats:
    """Beat confidence, beats and signal quality of a recording.

    Args:
        model: the fine-tuned 1-output beat model.
        signal: (n,) raw samples at ``sample_rate`` Hz (NaN/inf allowed: those windows skip).
        sample_rate: Hz of ``signal``; resampled to the modality rate.
        modality: 'ppg' for the released beat model.
        tail: ``"align"`` or ``"release"`` (module docstring).
        shift: samples between window starts.
        batch_size: windows per forward pass.
        chunk_size: feed the signal to :func:`beat_confidence_stream` in chunks of this many
            samples (``None``: one chunk); the result does not depend on it.
        progress: called as ``progress(done, total)`` each time the confidence of more
            samples is final (after every batch of windows), with the samples done so far and
            the recording's length, both at the modality rate; the last call has
            ``done == total``. It does not change the result; one that raises stops the run.

    Raises:
        ValueError: empty or too short a recording, or no window usable.
    """
    mod = get_modality(modality) if isinstance(modality, str) else modality
    x = resample(np.asarray(signal, dtype=np.float64), sample_rate, mod.sample_rate)
    step = len(x) if chunk_size is None else chunk_size
    chunks = (x[i : i + step] for i in range(0, max(len(x), 1), max(step, 1)))
    skipped: dict[int, str] = {}
    counter = [0]
    pieces: list[np.ndarray] = []
    done = 0
    for piece in beat_confidence_stream(model, chunks, shift=shift, batch_size=batch_size,
                                        tail=tail, skipped=skipped, counter=counter):
        pieces.append(piece)
        done += len(piece)
        if progress is not None and len(piece):
            progress(done, len(x))
    conf = np.concatenate(pieces)
    if counter[0] == 0:
        raise no_usable_window(len(skipped), skipped)
    peaks, heights = find_beats(conf)
    return Beats(x, mod.sample_rate, conf, peaks, heights, counter[0], skipped, tail)


# ------------------------------------------------------------------------------- summary
def _finite_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def heart_rate(peaks: np.ndarray, sample_rate: float, confidence: np.ndarray | None = None
               ) -> dict:
    """Heart rate from the inter-beat intervals of beat indices ``peaks`` (P,).

    ``median_bpm`` is ``60 / median(IBI)`` and ``mean_bpm`` ``60 / mean(IBI)`` (beats per
    minute over the beats' span). Intervals that span samples with no confidence (NaN in
    ``confidence``: only skipped windows cover them, so beats there cannot be found) are left
    out and counted in ``intervals_excluded``. ``None`` for the rates when no interval is left.
    """
    peaks = np.asarray(peaks, dtype=np.int64)
    keep = np.ones(max(len(peaks) - 1, 0), dtype=bool)  # (P-1,) one per interval
    if confidence is not None and len(keep):
        gaps = np.concatenate([[0], np.cumsum(np.isnan(confidence))])  # (n+1,) NaNs before i
        keep = gaps[peaks[1:]] == gaps[peaks[:-1] + 1]  # no NaN strictly between the two beats
    ibi = np.diff(peaks)[keep] / sample_rate  # (I,) seconds
    return {
        "median_bpm": _finite_or_none(60 / np.median(ibi)) if len(ibi) else None,
        "mean_bpm": _finite_or_none(60 / ibi.mean()) if len(ibi) else None,
        "n_intervals": len(ibi),
        "intervals_excluded": int((~keep).sum()),
    }


def beats_summary(beats: Beats) -> dict:
    """JSON-able recording-level summary: beats, confidence, quality, heart rate, windows."""
    return {
        "n_beats": len(beats.peaks),
        "median_confidence": _finite_or_none(beats.median_height),
        "quality": beats.category,
        "heart_rate": heart_rate(beats.peaks, beats.sample_rate, beats.confidence),
        "duration_s": beats.seconds,
        "sample_rate_hz": beats.sample_rate,
        "tail": beats.tail,
        "n_windows": beats.n_windows,
        "windows_skipped": len(beats.skipped),
        "skipped": [{"start_sample": int(start), "reason": why}
                    for start, why in list(beats.skipped.items())[:20]],  # the first 20
    }


def write_beats_json(path: str | Path, beats: Beats, recording: str | os.PathLike,
                     checkpoint: str | os.PathLike) -> Path:
    """``<stem>_beats.json``: the input and checkpoint paths and :func:`beats_summary`."""
    path = Path(path)
    path.write_text(json.dumps({"recording": str(recording), "checkpoint": str(checkpoint),
                                **beats_summary(beats)}, indent=1))
    return path


# ------------------------------------------------------------------------------- CLI
def write_beats_csv(path: str | Path, beats: Beats, input_rate: float) -> Path:
    """One row per beat: index at the modality rate, at the input rate, seconds, confidence,
    quality of that beat's height."""
    path = Path(path)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["beat", "sample", "input_sample", "time_s", "confidence", "quality"])
        for i, (p, h) in enumerate(zip(beats.peaks.tolist(), beats.heights.tolist(),
                                       strict=True)):
            w.writerow([i, p, round(p * input_rate / beats.sample_rate),
                        f"{p / beats.sample_rate:.3f}", f"{h:.6f}", quality_category(h)])
    return path
