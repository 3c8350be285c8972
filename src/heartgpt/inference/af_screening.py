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

from heartgpt.data.rhythm import disagreement, rhythm_verdict
from heartgpt.data.tokenizer import Modality, get_modality, resample, tokenize_window
from heartgpt.heads.applied import AppliedHead
from heartgpt.inference.loading import eval_mode, model_device
from heartgpt.inference.window_trust import (
    RhythmCheck,
    TrustContext,
    WindowTrust,
    assess_windows,
    disagreements,
    rhythm_check,
)
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
    raw_probs: np.ndarray | None = None  # (W,) the model's own (probs: with its temperature)
    temperature: float | None = None  # None: probs are the raw ones (no calibration stored)
    trust: WindowTrust | None = None  # None: no trust checks were asked for
    rhythm: RhythmCheck | None = None
    disagreements: list[str] = field(default_factory=list)  # (W,) '' where none
    rhythm_verdict: str = ""  # the recording's: 'regular' | 'irregular' | 'uncertain'
    recording_disagreement: str = ""

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
    def averaged(self) -> np.ndarray:
        """(W,) bool: the windows the recording's numbers stand on: the reliable ones when the
        trust checks ran and any window passed them, else every usable window."""
        if self.trust is not None and self.trust.reliable.any():
            return self.trust.reliable
        return self.usable

    @property
    def recording_prob(self) -> float:
        """Mean probability over the :attr:`averaged` windows."""
        return float(self.probs[self.averaged].mean())

    @property
    def fraction_above(self) -> float:
        """Fraction of the :attr:`averaged` windows with probability >= threshold."""
        return float((self.probs[self.averaged] >= self.threshold).mean())

    def averaged_text(self) -> str:
        """What the recording P(AF) averages, for titles and messages: ``mean of 16 windows``,
        ``mean of 17 windows, incl. the end-aligned tail #16``, ``mean of 41 reliable windows
        of 48; 7 unreliable: low quality (template) 7``."""
        averaged = self.averaged
        n = int(averaged.sum())
        text = f"mean of {n} window" if n == 1 else f"mean of {n} windows"
        if self.trust is not None:
            text = self.trust_text()
        tail = self.tail_window
        if tail is not None and averaged[tail]:
            text += f", incl. the end-aligned tail #{tail}"
        return text

    def trust_text(self) -> str:
        """How many windows the number stands on and why the others were left out."""
        assert self.trust is not None
        scored = int(self.usable.sum())
        reliable = int(self.trust.reliable.sum())
        text = (f"mean of {reliable} reliable window{'s' if reliable != 1 else ''} of {scored}"
                if reliable else f"mean of all {scored} window{'s' if scored != 1 else ''}, "
                                 "NONE reliable")
        unreliable = int(self.trust.unreliable.sum())
        if unreliable:
            reasons = ", ".join(f"{r} {n}" for r, n in self.trust.reason_counts().items())
            text += f"; {unreliable} unreliable: {reasons}"
        return text

    def summary(self) -> dict:
        """The recording-level numbers and which windows they average."""
        averaged = np.flatnonzero(self.averaged)
        tail = self.tail_window
        out = {
            "recording_af_prob": self.recording_prob,
            "fraction_windows_above_threshold": self.fraction_above,
            "threshold": self.threshold,
            "aggregation": ("mean of reliable window probabilities" if self.trust is not None
                            and self.trust.reliable.any()
                            else "mean of usable window probabilities"),
            "averaged_windows": index_ranges(averaged),
            "n_averaged": len(averaged),
            "tail": self.tail,
            "tail_window": tail,
            "tail_window_averaged": tail is not None and bool(self.averaged[tail]),
            "uncovered_end_samples": self.uncovered_end,
            "n_windows": len(self.starts),
            "n_skipped": len(self.skipped),
            "stride_samples": self.stride,
            "window_samples": self.window,
            "sample_rate_hz": self.sample_rate,
            "duration_s": len(self.signal) / self.sample_rate,
        }
        if self.raw_probs is not None:
            raw = self.raw_probs[self.averaged]
            out["recording_af_prob_raw"] = float(raw.mean())
            out["temperature"] = self.temperature
        if self.trust is not None:
            out.update(trust_summary(self))
        return out

    def window_rows(self) -> list[dict]:
        """Every window: where it is, its probability (raw beside it when calibrated) and,
        when the trust checks ran, whether it is reliable and why not, its OOD score and the
        rhythm of its intervals with the ``disagreement`` flag."""
        rows = []
        for i, (s, p, o) in enumerate(zip(self.starts.tolist(), self.probs.tolist(),
                                          self.overlaps_previous.tolist(), strict=True)):
            row = {"window": i, "start_sample": int(s), "end_sample": int(s) + self.window,
                   "start_s": s / self.sample_rate,
                   "af_prob": None if not np.isfinite(p) else float(p)}
            if self.raw_probs is not None:
                raw = float(self.raw_probs[i])
                row["af_prob_raw"] = raw if np.isfinite(raw) else None
            row["overlaps_previous"] = bool(o)
            if i in self.skipped:
                row["skipped"] = self.skipped[i]
            if self.trust is not None:
                row.update(trust_columns(self, i))
            rows.append(row)
        return rows

    def to_dict(self) -> dict:
        """JSON-able: the summary plus every window."""
        return {**self.summary(), "windows": self.window_rows()}


def trust_summary(res: AFScreen) -> dict:
    """The recording's trust numbers: how many windows are reliable and why the others are
    not, its rhythm (beats over the whole recording) and whether the model's P(AF)
    disagrees with it."""
    assert res.trust is not None
    rhythm = res.rhythm.recording if res.rhythm is not None else None
    out = {"n_reliable": int(res.trust.reliable.sum()),
           "n_unreliable": int(res.trust.unreliable.sum()),
           "unreliable_reasons": "; ".join(f"{r}: {n}" for r, n in
                                           res.trust.reason_counts().items()),
           "headline": f"P(AF) {res.recording_prob:.2f} ({res.trust_text()})",
           "ood_available": res.trust.ood_threshold is not None}
    if rhythm is not None:
        out.update({"rhythm_beats": rhythm.beats, "rhythm_heart_rate_bpm": rhythm.heart_rate_bpm,
                    "rhythm_cv": rhythm.cv, "rhythm_nrmssd": rhythm.nrmssd,
                    "rhythm_cosen": rhythm.cosen, "rhythm_verdict": res.rhythm_verdict,
                    "disagreement": res.recording_disagreement})
    return out


def trust_columns(res: AFScreen, i: int) -> dict:
    """Window ``i``'s trust columns (see :meth:`AFScreen.window_rows`)."""
    assert res.trust is not None
    row = res.trust.columns(i)
    if res.rhythm is not None:
        m = res.rhythm.windows[i]
        row.update({"rhythm_cv": m.cv if np.isfinite(m.cv) else None,
                    "rhythm_cosen": m.cosen if np.isfinite(m.cosen) else None,
                    "disagreement": res.disagreements[i]})
    return row


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


def af_probabilities(model: GPT | AppliedHead, tokens: np.ndarray | torch.Tensor) -> np.ndarray:
    """P(AF) of each window (W, T) -> (W,): ``sigmoid`` of the 1-output head at the last
    position of a GPT, or the positive column of a binary :class:`AppliedHead` (a head pooling
    other positions: :func:`~heartgpt.inference.loading.window_probability_model`)."""
    if isinstance(model, GPT):
        return af_probabilities_and_hidden(model, tokens)[0]
    x = torch.as_tensor(np.asarray(tokens), dtype=torch.long, device=model_device(model))
    with eval_mode(model):
        if isinstance(model, AppliedHead):
            return model(x)[:, 1].double().cpu().numpy()  # (W, 2): [1 - p, p]
        out = model(x)[:, -1, 0]  # (W,): an ONNX export (forward only, no hidden states)
    return torch.sigmoid(out).double().cpu().numpy()


def af_probabilities_and_hidden(model: GPT, tokens: np.ndarray | torch.Tensor
                                ) -> tuple[np.ndarray, torch.Tensor]:
    """:func:`af_probabilities` of a GPT and the hidden states (W, T, C) it read them from
    (``forward`` is ``head(hidden(x))``: the same numbers), for the OOD score in one pass."""
    x = torch.as_tensor(np.asarray(tokens), dtype=torch.long, device=model_device(model))
    with eval_mode(model):
        hidden = model.hidden(x)  # (W, T, C)
        out = model.head(hidden)[:, -1, 0]  # (W,)
    return torch.sigmoid(out).double().cpu().numpy(), hidden


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
    model: GPT | AppliedHead,
    signal: np.ndarray,
    sample_rate: float,
    modality: str | Modality,
    *,
    stride: int = DEFAULT_STRIDE,
    threshold: float = DEFAULT_THRESHOLD,
    batch_size: int = BATCH_SIZE,
    tail: str = DEFAULT_TAIL,
    trust: TrustContext | None = None,
) -> AFScreen:
    """AF probability of every window of a recording, and (``trust``) how far each can be
    trusted: its signal quality and OOD score (an unreliable window keeps its probability but
    the recording's numbers leave it out), the rhythm of its intervals beside its P(AF) with
    the ``disagreement`` flag, and probabilities scaled by the model's stored temperature (the
    raw ones beside them).

    Args:
        model: a fine-tuned 1-output GPT (the AF head read at the last position) or a binary
            :class:`AppliedHead` (:func:`~heartgpt.inference.loading.window_probability_model`).
        signal: (n,) raw samples at ``sample_rate`` Hz; NaN/inf allowed (those windows skip).
        sample_rate: Hz of ``signal``; resampled to the modality rate.
        modality: 'ecg' / 'ppg'.
        stride: samples (at the modality rate) between window starts.
        threshold: for :attr:`AFScreen.fraction_above`.
        batch_size: windows per forward pass.
        tail: ``"align"`` or ``"drop"``: the end of the recording (module docstring).
        trust: thresholds, temperature and OOD score (:func:`~heartgpt.inference.window_trust.
            trust_context`); None: the bare probabilities.

    Raises:
        ValueError: recording shorter than a window, or no window can be tokenised.
    """
    mod = get_modality(modality) if isinstance(modality, str) else modality
    x = resample(np.asarray(signal, dtype=np.float64), sample_rate, mod.sample_rate)
    window = model.config.block_size
    starts = window_starts(len(x), window, stride, tail)
    probs = np.full(len(starts), np.nan)
    ood = np.full(len(starts), np.nan)
    score_ood = trust.ood if trust is not None else None
    skipped: dict[int, str] = {}
    batch_idx: list[int] = []
    batch: list[np.ndarray] = []

    from_hidden = trust.ood_hidden if trust is not None and isinstance(model, GPT) else None

    def run_batch() -> None:
        tokens = np.stack(batch)
        if from_hidden is not None:  # one forward pass: the probability and the OOD score
            probs[batch_idx], hidden = af_probabilities_and_hidden(model, tokens)
            ood[batch_idx] = from_hidden(hidden)
            return
        probs[batch_idx] = af_probabilities(model, tokens)
        if score_ood is not None:
            ood[batch_idx] = score_ood(tokens)

    for i, tok in tokenised_windows(x, starts, window, skipped):
        batch_idx.append(i)
        batch.append(tok)
        if len(batch) == batch_size:
            run_batch()
            batch_idx, batch = [], []
    if batch:
        run_batch()
    if not np.isfinite(probs).any():
        raise no_usable_window(len(starts), skipped)
    res = AFScreen(x, mod.sample_rate, window, starts, probs, skipped, threshold, stride, tail)
    if trust is not None:
        scored_ood = score_ood is not None or from_hidden is not None
        add_trust(res, trust, mod.name, ood if scored_ood else None)
    return res


def add_trust(res: AFScreen, trust: TrustContext, modality: str, ood: np.ndarray | None) -> None:
    """Calibrate ``res``'s probabilities, judge its windows and check its rhythm (in place)."""
    settings = trust.settings
    if trust.temperature is not None:  # calibrated: the raw probabilities kept beside them
        res.raw_probs, res.temperature = res.probs, trust.temperature
        res.probs = trust.calibrated(res.probs)
    res.trust = assess_windows(res.signal, res.starts, res.window, res.sample_rate, modality,
                               res.usable, settings, ood, trust.ood_threshold)
    res.rhythm = rhythm_check(res.signal, res.starts, res.window, res.sample_rate, modality,
                              settings)
    res.disagreements = disagreements(res.probs, res.rhythm, settings)
    res.rhythm_verdict = rhythm_verdict(res.rhythm.recording, settings.rhythm)
    res.recording_disagreement = disagreement(res.recording_prob, res.rhythm.recording,
                                              settings.rhythm) or ""


# ------------------------------------------------------------------------------- outputs
TRUST_COLUMNS = ("reliable", "unreliable_reason", "ood_score", "rhythm_cv", "rhythm_cosen",
                 "disagreement")


def write_csv(path: str | Path, result: AFScreen) -> Path:
    """One row per window: index, samples, seconds, probability (empty if skipped; the raw one
    beside it when the model is calibrated), status, ``overlaps_previous`` (1 for the
    end-aligned tail window, which starts less than a stride after the previous one) and, when
    the trust checks ran, :data:`TRUST_COLUMNS`."""
    path = Path(path)
    raw = result.raw_probs is not None
    trusted = result.trust is not None
    rows = result.window_rows()

    def cell(value: object) -> object:
        if value is None:
            return ""
        if isinstance(value, bool):
            return int(value)
        return f"{value:.6f}" if isinstance(value, float) else value

    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["window", "start_sample", "end_sample", "start_s", "end_s", "af_prob",
                    *(["af_prob_raw"] if raw else []), "status", "overlaps_previous",
                    *(TRUST_COLUMNS if trusted else [])])
        for i, (s, p, o) in enumerate(zip(result.starts.tolist(), result.probs.tolist(),
                                          result.overlaps_previous.tolist(), strict=True)):
            e = s + result.window
            raw_cell = [cell(rows[i]["af_prob_raw"])] if raw else []
            w.writerow([i, s, e, f"{s / result.sample_rate:.2f}", f"{e / result.sample_rate:.2f}",
                        f"{p:.6f}" if np.isfinite(p) else "", *raw_cell,
                        f"skipped: {result.skipped[i]}" if i in result.skipped else "ok", int(o),
                        *([cell(rows[i].get(c)) for c in TRUST_COLUMNS] if trusted else [])])
    return path
