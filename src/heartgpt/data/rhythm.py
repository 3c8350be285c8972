"""Rhythm cross-check for AF: beat-to-beat intervals and their irregularity, beside P(AF).

AF is an irregularly irregular rhythm; a model that says AF over regular intervals (or sinus
over irregular ones) deserves a second look. This module needs no model:

- :func:`find_beats`: beat samples of a signal at its rate with a library detector
  (``neurokit2.ecg_peaks`` on ``ecg_clean`` for ECG; ``neurokit2.ppg_findpeaks`` (Elgendi) on
  ``ppg_clean`` for PPG), unless the caller has beats already (the PPG beat model's).
- :func:`rhythm_measures`: from beat samples, the RR intervals and established irregularity
  measures: coefficient of variation (CV), RMSSD and RMSSD / mean RR (nRMSSD), pNN50, and
  COSEn, the coefficient of sample entropy designed for AF in short records (Lake & Moorman
  2011, Am J Physiol Heart 300:H319): ``SampEn(m=1, r) + ln(2r) - ln(mean RR)`` with r (s)
  starting at ``cosen_r_start`` and grown by ``cosen_r_step`` until at least
  ``cosen_min_matches`` (m+1)-matches are found, as in the paper.
- :func:`rhythm_verdict`: 'regular' | 'irregular' | 'uncertain' (too few intervals, or
  measures between the thresholds); :func:`disagreement`: the model's call against it.

Thresholds come from ``conf/trust/default.yaml`` (``rhythm:``) via :class:`RhythmSettings`;
how each default was measured is written beside it there (``bench/trust_flags.py``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, fields

import numpy as np

from heartgpt.errors import ConfigError


@dataclass(frozen=True)
class RhythmSettings:
    """The ``rhythm:`` block of ``conf/trust/<name>.yaml`` (every key required)."""

    min_rr_s: float  # intervals outside [min_rr_s, max_rr_s] are detector slips, dropped
    max_rr_s: float
    min_intervals: int  # fewer usable intervals: verdict 'uncertain'
    cosen_r_start: float  # s
    cosen_r_step: float  # s
    cosen_r_max: float  # s
    cosen_min_matches: int
    regular_max: dict  # measure -> at most this for 'regular' (null: measure not used)
    irregular_min: dict  # measure -> at least this for 'irregular' (null: not used)
    af_above: float  # P(AF) >= this: the model says AF
    sinus_below: float  # P(AF) < this: the model says sinus

    @classmethod
    def from_config(cls, cfg: dict, where: str = "trust.rhythm") -> RhythmSettings:
        """Build from a mapping; a missing or unknown key is a :class:`ConfigError`."""
        names = {f.name for f in fields(cls)}
        missing, extra = names - set(cfg), set(cfg) - names
        if missing or extra:
            raise ConfigError(where, f"missing keys {sorted(missing)}, unknown keys "
                              f"{sorted(extra)}")
        out = cls(**{k: cfg[k] for k in names})
        for side in ("regular_max", "irregular_min"):
            bad = set(getattr(out, side)) - set(MEASURES)
            if bad:
                raise ConfigError(f"{where}.{side}", f"unknown measures {sorted(bad)} "
                                  f"(known: {', '.join(MEASURES)})")
        return out


MEASURES = ("cv", "nrmssd", "pnn50", "cosen")


@dataclass(frozen=True)
class RhythmMeasures:
    """Irregularity of one stretch of beats (NaN where too few intervals)."""

    beats: int
    intervals: int  # usable RR intervals
    mean_rr_s: float
    heart_rate_bpm: float
    cv: float
    rmssd_s: float
    nrmssd: float
    pnn50: float
    cosen: float

    def as_dict(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def find_beats(x: np.ndarray, rate: float, modality: str) -> np.ndarray:
    """Beat sample indices of ``x`` (samples at ``rate`` Hz) by neurokit2's detectors: R peaks
    (``ecg_peaks``, method 'neurokit') for ECG, systolic peaks (``ppg_findpeaks``, Elgendi) for
    PPG. Non-finite samples are replaced by the median first; a flat signal has no beats."""
    import neurokit2 as nk

    x = np.asarray(x, dtype=np.float64).reshape(-1)
    ok = np.isfinite(x)
    if ok.sum() < 2 or np.ptp(x[ok]) == 0:
        return np.zeros(0, dtype=np.int64)
    x = np.where(ok, x, np.median(x[ok]))
    fs = round(rate)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if modality == "ecg":
                _, info = nk.ecg_peaks(nk.ecg_clean(x, sampling_rate=fs), sampling_rate=fs)
                peaks = info["ECG_R_Peaks"]
            elif modality == "ppg":
                peaks = nk.ppg_findpeaks(nk.ppg_clean(x, sampling_rate=fs),
                                         sampling_rate=fs)["PPG_Peaks"]
            else:
                raise ValueError(f"modality must be 'ecg' or 'ppg', not {modality!r}")
        except (IndexError, TypeError, ValueError, ZeroDivisionError) as e:  # too short, no peak
            if "modality" in str(e):
                raise
            return np.zeros(0, dtype=np.int64)  # nk fails on signals without any peak
    return np.asarray(peaks, dtype=np.int64)


def _sample_entropy_counts(rr: np.ndarray, r: float) -> tuple[int, int]:
    """(B, A): pairs of length-1 and length-2 templates within ``r`` (Chebyshev), self-matches
    excluded, over the same N-1 template starts (Richman & Moorman 2000, m=1)."""
    n = rr.size - 1  # templates of length m+1 = 2 start at 0..n-1
    a1 = rr[:n]
    d1 = np.abs(a1[:, None] - a1[None, :]) <= r
    d2 = d1 & (np.abs(rr[1 : n + 1][:, None] - rr[1 : n + 1][None, :]) <= r)
    iu = np.triu_indices(n, k=1)
    return int(d1[iu].sum()), int(d2[iu].sum())


def cosen(rr: np.ndarray, settings: RhythmSettings) -> float:
    """COSEn of RR intervals ``rr`` (s) (Lake & Moorman 2011); NaN when no r up to
    ``cosen_r_max`` gives ``cosen_min_matches`` matches."""
    rr = np.asarray(rr, dtype=np.float64)
    if rr.size < 3:
        return float("nan")
    r = settings.cosen_r_start
    while r <= settings.cosen_r_max + 1e-12:
        b, a = _sample_entropy_counts(rr, r)
        if a >= settings.cosen_min_matches and b > 0:
            return float(-np.log(a / b) + np.log(2 * r) - np.log(rr.mean()))
        r += settings.cosen_r_step
    return float("nan")


def rhythm_measures(beats: np.ndarray, rate: float, settings: RhythmSettings) -> RhythmMeasures:
    """Irregularity measures of beat samples ``beats`` (at ``rate`` Hz, increasing).

    Intervals outside ``[min_rr_s, max_rr_s]`` are dropped (a missed or doubled detection, not
    a heart beat); with fewer than 2 usable intervals every measure is NaN."""
    beats = np.sort(np.asarray(beats, dtype=np.float64).reshape(-1))
    rr = np.diff(beats) / rate
    rr = rr[(rr >= settings.min_rr_s) & (rr <= settings.max_rr_s)]
    nan = float("nan")
    if rr.size < 2:
        mean = float(rr.mean()) if rr.size else nan
        return RhythmMeasures(int(beats.size), int(rr.size), mean, 60 / mean if rr.size else nan,
                              nan, nan, nan, nan, nan)
    mean = float(rr.mean())
    succ = np.diff(rr)
    rmssd = float(np.sqrt(np.mean(succ**2)))
    return RhythmMeasures(
        beats=int(beats.size), intervals=int(rr.size), mean_rr_s=mean, heart_rate_bpm=60 / mean,
        cv=float(rr.std() / mean), rmssd_s=rmssd, nrmssd=rmssd / mean,
        pnn50=float(np.mean(np.abs(succ) > 0.05)), cosen=cosen(rr, settings),
    )


def rhythm_verdict(m: RhythmMeasures, settings: RhythmSettings) -> str:
    """'regular' when every used measure is at most its ``regular_max``, 'irregular' when every
    used measure is at least its ``irregular_min``, else (or with fewer than ``min_intervals``
    intervals, or a NaN measure) 'uncertain'."""
    if m.intervals < settings.min_intervals:
        return "uncertain"
    values = m.as_dict()

    def all_(side: dict, op) -> bool:
        used = {k: v for k, v in side.items() if v is not None}
        return bool(used) and all(np.isfinite(values[k]) and op(values[k], v)
                                  for k, v in used.items())

    if all_(settings.regular_max, lambda a, b: a <= b):
        return "regular"
    if all_(settings.irregular_min, lambda a, b: a >= b):
        return "irregular"
    return "uncertain"


def disagreement(p_af: float, m: RhythmMeasures, settings: RhythmSettings) -> str | None:
    """Why the model's call and the rhythm disagree, or None: P(AF) >= ``af_above`` over
    'regular' intervals, or P(AF) < ``sinus_below`` over 'irregular' ones."""
    if not np.isfinite(p_af):
        return None
    verdict = rhythm_verdict(m, settings)
    if p_af >= settings.af_above and verdict == "regular":
        return (f"model says AF (P={p_af:.2f}) over regular intervals "
                f"(CV {m.cv:.2f}, COSEn {m.cosen:.2f}, {m.intervals} intervals)")
    if p_af < settings.sinus_below and verdict == "irregular":
        return (f"model says sinus (P={p_af:.2f}) over irregular intervals "
                f"(CV {m.cv:.2f}, COSEn {m.cosen:.2f}, {m.intervals} intervals)")
    return None
