"""Whether each window a model scores can be trusted, and the rhythm beside an AF answer.

:func:`assess_windows` judges every window of a recording (samples at the model's rate, before
tokenising) by its signal quality (:mod:`heartgpt.data.signal_quality`) and, when the model
holds a reference of its training windows, by its out-of-distribution score (a distance and
the threshold past which a window is unlike the training data). A window that fails either is
``unreliable`` with its reason; it keeps its own number, but the recording's headline numbers
leave it out and say over how many windows they stand.

:func:`rhythm_check` finds the recording's beats once (a library detector, or the beats the
caller has, e.g. the PPG beat model's) and measures the irregularity of the intervals in each
window and over the recording (:mod:`heartgpt.data.rhythm`), for the ``disagreement`` flag
beside P(AF).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from heartgpt.data.rhythm import (
    RhythmMeasures,
    disagreement,
    find_beats,
    rhythm_measures,
    rhythm_verdict,
)
from heartgpt.data.signal_quality import TrustSettings, recording_quality
from heartgpt.heads.calibration import logits_of, pooled_hidden, scaled_probabilities
from heartgpt.model.checkpoint_format import LoadedModel
from heartgpt.model.trust import ood_scores

SKIPPED = "skipped"  # a window that was never scored (flat, NaN): not counted as unreliable


@dataclass(frozen=True)
class TrustContext:
    """What the tools need to judge a model's windows: the thresholds, the model's temperature
    (None: its probabilities are uncalibrated) and its OOD score (None: it stores no reference
    of its training windows, the score is unavailable)."""

    settings: TrustSettings
    temperature: float | None = None
    ood: Callable[[np.ndarray], np.ndarray] | None = None  # tokens (B, T) -> (B,) distances
    ood_threshold: float | None = None
    calibration_kind: str = "binary"  # of the temperature: 'binary' | 'multiclass'
    # the same distances from hidden states (B, T, C) the scoring pass already computed (one
    # forward pass instead of two); None where the reference's pooling needs the head
    ood_hidden: Callable[[torch.Tensor], np.ndarray] | None = None

    def calibrated(self, probs: np.ndarray) -> np.ndarray:
        """Binary probabilities ``probs`` rescaled by a binary temperature (as they are without
        one); NaN stays NaN."""
        if self.temperature is None or self.calibration_kind != "binary":
            return probs
        p = torch.as_tensor(probs, dtype=torch.float64)
        out = scaled_probabilities(logits_of(p, "binary"), self.temperature, "binary").double()
        return torch.where(torch.isfinite(p), out, p).numpy()

    def calibrated_classes(self, probs: np.ndarray) -> np.ndarray | None:
        """Class probabilities (..., K) rescaled by the temperature (a binary head's columns
        are ``[1 - p, p]``); None when the model stores none."""
        if self.temperature is None:
            return None
        if self.calibration_kind == "binary":
            p = self.calibrated(probs[..., 1])
            return np.stack([1.0 - p, p], axis=-1)
        p = torch.as_tensor(probs, dtype=torch.float64)
        return scaled_probabilities(logits_of(p, "multiclass"), self.temperature,
                                    "multiclass").double().numpy()


def trust_context(loaded: LoadedModel, settings: TrustSettings) -> TrustContext:
    """``loaded``'s calibration (a binary temperature) and OOD reference with ``settings``."""
    cal = loaded.calibration
    temperature = float(cal.temperature) if cal is not None else None
    kind = cal.kind if cal is not None else "binary"
    ref = loaded.ood_reference
    if ref is None or not hasattr(loaded.model, "hidden"):  # an ONNX file: no hidden states
        return TrustContext(settings, temperature, calibration_kind=kind)

    def ood(tokens: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            scores = ood_scores(loaded, tokens=torch.as_tensor(tokens, dtype=torch.long))
        return scores.double().numpy()

    def ood_hidden(hidden: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            pooled = pooled_hidden(ref.pooling, None, hidden)  # mean / last: no head needed
            return ood_scores(loaded, pooled=pooled).double().numpy()

    from_hidden = ood_hidden if ref.pooling in ("mean", "last") else None
    return TrustContext(settings, temperature, ood, float(ref.threshold), kind, from_hidden)


@dataclass
class WindowTrust:
    """The verdict on every window of one recording.

    Attributes:
        reasons: (W,) '' for a reliable window, else why not ('low quality (template)',
            'out of distribution', ...); :data:`SKIPPED` for a window the model did not score.
        quality: (W,) the quality scores of each scored window ({} for skipped ones).
        ood: (W,) the out-of-distribution score (NaN: skipped, or no reference).
        ood_threshold: the score past which a window is out of distribution (None: no
            reference in the checkpoint: the score is unavailable).
    """

    reasons: list[str]
    quality: list[dict] = field(default_factory=list)
    ood: np.ndarray | None = None
    ood_threshold: float | None = None

    @property
    def reliable(self) -> np.ndarray:
        """(W,) bool: scored and neither of low quality nor out of distribution."""
        return np.array([r == "" for r in self.reasons], dtype=bool)

    @property
    def unreliable(self) -> np.ndarray:
        """(W,) bool: scored but failing a check (skipped windows are neither)."""
        return np.array([r not in ("", SKIPPED) for r in self.reasons], dtype=bool)

    def columns(self, i: int) -> dict:
        """Window ``i``'s ``reliable``, ``unreliable_reason`` and ``ood_score`` (None: not
        scored, or no reference)."""
        reason = self.reasons[i]
        ood = self.ood[i] if self.ood is not None else float("nan")
        return {"reliable": reason == "",
                "unreliable_reason": "" if reason == SKIPPED else reason,
                "ood_score": float(ood) if np.isfinite(ood) else None}

    def reason_counts(self) -> dict[str, int]:
        """How many windows each reason made unreliable (a window may have several)."""
        counts: Counter[str] = Counter()
        for r in self.reasons:
            if r not in ("", SKIPPED):
                counts.update(part.strip() for part in r.split(";"))
        return dict(counts.most_common())


def assess_windows(x: np.ndarray, starts: np.ndarray, window: int, rate: float, modality: str,
                   scored: np.ndarray, settings: TrustSettings,
                   ood: np.ndarray | None = None, ood_threshold: float | None = None
                   ) -> WindowTrust:
    """Judge the windows ``x[s : s + window]`` (``x`` at the model's ``rate``) of ``starts``.

    Args:
        scored: (W,) bool, the windows the model scored (the others are :data:`SKIPPED`).
        settings: the trust thresholds (``conf/trust/``).
        ood: (W,) each window's out-of-distribution score (NaN where not scored), or None.
        ood_threshold: a score above it is out of distribution; None: no reference.
    """
    reasons = [SKIPPED] * len(starts)
    quality: list[dict] = [{} for _ in starts]
    idx = np.flatnonzero(scored)
    if len(idx):
        windows = np.stack([x[s : s + window] for s in starts[idx]])
        for i, verdict in zip(idx.tolist(), recording_quality(windows, rate, modality, settings),
                              strict=True):
            quality[i] = verdict.scores
            parts = [verdict.reason] if verdict.unreliable else []
            if ood is not None and ood_threshold is not None and np.isfinite(ood[i]) \
                    and ood[i] > ood_threshold:
                parts.append("out of distribution")
            reasons[i] = "; ".join(parts)
    return WindowTrust(reasons, quality, ood, ood_threshold)


@dataclass
class RhythmCheck:
    """The recording's beats and the irregularity of its intervals, per window and overall."""

    beats: np.ndarray  # beat samples at the model's rate
    windows: list[RhythmMeasures]  # (W,) the intervals inside each window
    recording: RhythmMeasures

    def verdicts(self, settings: TrustSettings) -> list[str]:
        """(W,) 'regular' | 'irregular' | 'uncertain' per window."""
        return [rhythm_verdict(m, settings.rhythm) for m in self.windows]


def rhythm_check(x: np.ndarray, starts: np.ndarray, window: int, rate: float, modality: str,
                 settings: TrustSettings, beats: np.ndarray | None = None) -> RhythmCheck:
    """Beats of ``x`` (at ``rate``; ``beats`` when the caller has them) and the rhythm measures
    of each window ``[s, s + window)`` and of the whole recording."""
    beats = find_beats(x, rate, modality) if beats is None else np.asarray(beats, np.int64)
    per_window = [rhythm_measures(beats[(beats >= s) & (beats < s + window)], rate,
                                  settings.rhythm) for s in starts.tolist()]
    return RhythmCheck(beats, per_window, rhythm_measures(beats, rate, settings.rhythm))


def disagreements(probs: np.ndarray, check: RhythmCheck, settings: TrustSettings) -> list[str]:
    """(W,) why the model's P(AF) of each window and the window's rhythm disagree ('' if not)."""
    return [disagreement(float(p), m, settings.rhythm) or ""
            for p, m in zip(probs.tolist(), check.windows, strict=True)]

