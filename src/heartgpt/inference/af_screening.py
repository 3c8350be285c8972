"""Screen a recording of any length for atrial fibrillation with a fine-tuned HeartGPT model.

The recording is resampled to the modality rate (ECG 100 Hz, PPG 50 Hz) and cut into windows
of ``block_size`` (500) samples every ``stride`` samples (default 50, the shift of the paper's
AF data: 0.5 s of ECG, 1 s of PPG). Each window is tokenised on its own (own min/max), as the
released AF GUI does, and its probability is ``sigmoid(head(last position))``. A 500-sample
recording is one window: the GUI's number, whatever the tail.

The end of the recording (``tail``), when the last stride-aligned window stops short of it:

* ``"align"`` (default): one more window is aligned to end at the last sample, so every sample
  is covered (as ``detect_beats --tail align``). That window overlaps the one before it by more
  than ``window - stride`` samples, so the stretch they share counts about twice in the
  recording mean; it is flagged (``overlaps_previous``, ``tail_window``) in the CSV and JSON.
* ``"drop"``: only the stride-aligned windows, equally spaced and equally weighted; the last
  ``< stride`` samples (under 1 s at the default stride) are in no window and are reported as
  ``uncovered_end_samples``.

The default covers every sample: a screen should not ignore the end of a recording, and the
doubled weight of the tail is visible in the outputs; ``drop`` gives the plain stride grid.

Windows that cannot be tokenised (flat, or holding NaN/inf samples) are skipped and reported;
it is an error only when none is usable. The recording-level summary is the **mean of the
usable windows' probabilities** and the **fraction of usable windows at or above the
threshold** (0.5): the first is a smooth score, the second a burden-like measure.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from heartgpt.data.tokenizer import Modality, get_modality, resample, tokenize_window
from heartgpt.inference.loading import eval_mode, model_device
from heartgpt.model import GPT

DEFAULT_STRIDE = 50
DEFAULT_THRESHOLD = 0.5
BATCH_SIZE = 64
TAILS = ("align", "drop")
DEFAULT_TAIL = "align"


def index_ranges(indices: np.ndarray) -> str:
    """Window indices as compact ranges: ``[0, 1, 2, 5, 7, 8] -> "0-2, 5, 7-8"`` ("" if none)."""
    idx = np.asarray(indices, dtype=np.int64)
    if not len(idx):
        return ""
    breaks = np.flatnonzero(np.diff(idx) != 1)  # (R-1,) last position of every run but the last
    firsts, lasts = idx[np.r_[0, breaks + 1]], idx[np.r_[breaks, len(idx) - 1]]
    return ", ".join(f"{a}" if a == b else f"{a}-{b}"
                     for a, b in zip(firsts.tolist(), lasts.tolist(), strict=True))


@dataclass
class AFScreen:
    """Per-window AF probabilities of one recording (at the modality rate)."""

    signal: np.ndarray  # (n,) float64 at the modality rate
    sample_rate: float
    window: int
    starts: np.ndarray  # (W,) int64 first sample of every window
    probs: np.ndarray  # (W,) float64, NaN for skipped windows
    skipped: dict[int, str] = field(default_factory=dict)  # window index -> reason
    threshold: float = DEFAULT_THRESHOLD
    stride: int = DEFAULT_STRIDE
    tail: str = DEFAULT_TAIL

    @property
    def usable(self) -> np.ndarray:
        """(W,) bool: windows with a probability (not skipped)."""
        return np.isfinite(self.probs)

    @property
    def overlaps_previous(self) -> np.ndarray:
        """(W,) bool: windows starting less than ``stride`` after the previous one (the
        end-aligned tail window), whose shared stretch counts twice in the mean."""
        return np.diff(self.starts, prepend=self.starts[0] - self.stride) < self.stride

    @property
    def tail_window(self) -> int | None:
        """Index of the end-aligned tail window, ``None`` if there is none."""
        flagged = np.flatnonzero(self.overlaps_previous)
        return int(flagged[-1]) if len(flagged) else None

    @property
    def uncovered_end(self) -> int:
        """Samples after the end of the last window (``tail="drop"``: fewer than ``stride``)."""
        return len(self.signal) - int(self.starts[-1]) - self.window

    @property
    def recording_prob(self) -> float:
        """Mean probability over the usable windows."""
        return float(self.probs[self.usable].mean())

    @property
    def fraction_above(self) -> float:
        """Fraction of usable windows with probability >= threshold."""
        return float((self.probs[self.usable] >= self.threshold).mean())

    def averaged_text(self) -> str:
        """What the recording P(AF) averages, for titles and messages: ``mean of 16 windows``,
        ``mean of 17 windows, incl. the end-aligned tail #16``."""
        n = int(self.usable.sum())
        text = f"mean of {n} window" if n == 1 else f"mean of {n} windows"
        tail = self.tail_window
        if tail is not None and self.usable[tail]:
            text += f", incl. the end-aligned tail #{tail}"
        return text

    def summary(self) -> dict:
        """The recording-level numbers and which windows they average."""
        averaged = np.flatnonzero(self.usable)
        tail = self.tail_window
        return {
            "recording_af_prob": self.recording_prob,
            "fraction_windows_above_threshold": self.fraction_above,
            "threshold": self.threshold,
            "aggregation": "mean of usable window probabilities",
            "averaged_windows": index_ranges(averaged),
            "n_averaged": len(averaged),
            "tail": self.tail,
            "tail_window": tail,
            "tail_window_averaged": tail is not None and bool(self.usable[tail]),
            "uncovered_end_samples": self.uncovered_end,
            "n_windows": len(self.starts),
            "n_skipped": len(self.skipped),
            "stride_samples": self.stride,
            "window_samples": self.window,
            "sample_rate_hz": self.sample_rate,
            "duration_s": len(self.signal) / self.sample_rate,
        }

    def to_dict(self) -> dict:
        """JSON-able: the summary plus every window."""
        windows = [
            {"window": i, "start_sample": int(s), "end_sample": int(s) + self.window,
             "start_s": s / self.sample_rate, "af_prob": None if not np.isfinite(p) else float(p),
             "overlaps_previous": bool(o),
             **({"skipped": self.skipped[i]} if i in self.skipped else {})}
            for i, (s, p, o) in enumerate(zip(self.starts.tolist(), self.probs.tolist(),
                                              self.overlaps_previous.tolist(), strict=True))
        ]
        return {**self.summary(), "windows": windows}


def window_starts(n_samples: int, window: int, stride: int, tail: str = DEFAULT_TAIL
                  ) -> np.ndarray:
    """(W,) starts every ``stride`` samples; ``tail="align"``: plus one window ending at the
    last sample when the last of them stops short of it."""
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if tail not in TAILS:
        raise ValueError(f"tail must be one of {TAILS}, got {tail!r}")
    if n_samples < window:
        raise ValueError(f"recording too short: {n_samples} samples at the modality rate, "
                         f"need at least {window}")
    starts = np.arange(0, n_samples - window + 1, stride, dtype=np.int64)
    if tail == "align" and starts[-1] + window < n_samples:
        starts = np.append(starts, n_samples - window)
    return starts


def af_probabilities(model: GPT, tokens: np.ndarray | torch.Tensor) -> np.ndarray:
    """``sigmoid`` of the 1-output head at the last position of each window (W, T) -> (W,)."""
    x = torch.as_tensor(np.asarray(tokens), dtype=torch.long, device=model_device(model))
    with eval_mode(model):
        out = model(x)[:, -1, 0]  # (W,)
    return torch.sigmoid(out).double().cpu().numpy()


def no_usable_window(n_windows: int, skipped: dict[int, str]) -> ValueError:
    """The error of a recording none of whose ``n_windows`` windows can be tokenised."""
    first = next(iter(skipped.values()), "")
    return ValueError(f"no usable window: all {n_windows} are flat or hold NaN/inf "
                      f"(first: {first})")


def tokenised_windows(
    signal: np.ndarray, starts: np.ndarray, window: int, skipped: dict[int, str]
) -> Iterator[tuple[int, np.ndarray]]:
    """``(index, tokens)`` of every window ``signal[s : s + window]`` that can be tokenised;
    the others are recorded in ``skipped`` (index -> reason)."""
    for i, s in enumerate(starts):
        try:
            yield i, tokenize_window(signal[s : s + window])
        except ValueError as e:
            skipped[i] = str(e)


def screen_af(
    model: GPT,
    signal: np.ndarray,
    sample_rate: float,
    modality: str | Modality,
    *,
    stride: int = DEFAULT_STRIDE,
    threshold: float = DEFAULT_THRESHOLD,
    batch_size: int = BATCH_SIZE,
    tail: str = DEFAULT_TAIL,
) -> AFScreen:
    """AF probability of every window of a recording.

    Args:
        model: a fine-tuned 1-output GPT (the AF head).
        signal: (n,) raw samples at ``sample_rate`` Hz; NaN/inf allowed (those windows skip).
        sample_rate: Hz of ``signal``; resampled to the modality rate.
        modality: 'ecg' / 'ppg'.
        stride: samples (at the modality rate) between window starts.
        threshold: for :attr:`AFScreen.fraction_above`.
        batch_size: windows per forward pass.
        tail: ``"align"`` or ``"drop"``: the end of the recording (module docstring).

    Raises:
        ValueError: recording shorter than a window, or no window can be tokenised.
    """
    mod = get_modality(modality) if isinstance(modality, str) else modality
    x = resample(np.asarray(signal, dtype=np.float64), sample_rate, mod.sample_rate)
    window = model.config.block_size
    starts = window_starts(len(x), window, stride, tail)
    probs = np.full(len(starts), np.nan)
    skipped: dict[int, str] = {}
    batch_idx: list[int] = []
    batch: list[np.ndarray] = []
    for i, tok in tokenised_windows(x, starts, window, skipped):
        batch_idx.append(i)
        batch.append(tok)
        if len(batch) == batch_size:
            probs[batch_idx] = af_probabilities(model, np.stack(batch))
            batch_idx, batch = [], []
    if batch:
        probs[batch_idx] = af_probabilities(model, np.stack(batch))
    if not np.isfinite(probs).any():
        raise no_usable_window(len(starts), skipped)
    return AFScreen(x, mod.sample_rate, window, starts, probs, skipped, threshold, stride, tail)


# ------------------------------------------------------------------------------- outputs
def write_csv(path: str | Path, result: AFScreen) -> Path:
    """One row per window: index, samples, seconds, probability (empty if skipped), status,
    and ``overlaps_previous`` (1 for the end-aligned tail window, which starts less than a
    stride after the previous one)."""
    path = Path(path)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["window", "start_sample", "end_sample", "start_s", "end_s", "af_prob",
                    "status", "overlaps_previous"])
        for i, (s, p, o) in enumerate(zip(result.starts.tolist(), result.probs.tolist(),
                                          result.overlaps_previous.tolist(), strict=True)):
            e = s + result.window
            w.writerow([i, s, e, f"{s / result.sample_rate:.2f}", f"{e / result.sample_rate:.2f}",
                        f"{p:.6f}" if np.isfinite(p) else "",
                        f"skipped: {result.skipped[i]}" if i in result.skipped else "ok", int(o)])
    return path
