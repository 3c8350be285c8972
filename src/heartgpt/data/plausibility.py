"""Does a recording look like what the user says it is? Two cheap checks on the raw signal.

- :func:`dominant_bpm`: the strongest periodicity between 5 and 600 beats per minute (the
  autocorrelation's first strong peak). A heart outside :data:`PLAUSIBLE_BPM` (25-250) almost
  always means a wrong sampling rate: a rate 10x too low makes 70 bpm look like 7.
- :func:`evident_modality`: ECG or PPG from morphology alone. ECG's QRS complexes put a large
  share of the power above :data:`SHARP_HZ`; a finger PPG is a smooth wave with almost none.

:func:`recording_problems` words both for one recording. :func:`check_recording` (the tools and
``predict``) stops on a recording that evidently is the other modality than the checkpoint's,
unless the user named the modality, and warns on an implausible rate; ``prepare`` keeps such
records with a warning each (``summary.json``). See ``data/README.md`` ("Plausibility checks").
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from heartgpt.errors import InputError

PLAUSIBLE_BPM = (25.0, 250.0)  # outside: "is the sampling rate right?"
SEARCH_BPM = (5.0, 600.0)  # periodicities looked for
SHARP_HZ = 8.0  # ECG: QRS energy above this; finger PPG: almost none
ECG_SHARE = 0.15  # share of the 0.5-40 Hz power above SHARP_HZ: at least this is evidently ECG
PPG_SHARE = 0.03  # at most this is evidently PPG
MIN_SECONDS = 4.0  # shorter recordings are not judged
MAX_SECONDS = 120.0  # only the first two minutes are looked at


@dataclass(frozen=True)
class Plausibility:
    """What the signal itself says (None: could not tell)."""

    bpm: float | None  # dominant rhythm, beats per minute
    modality: str | None  # 'ecg' | 'ppg' | None
    sharp_share: float | None  # share of the 0.5-40 Hz power above SHARP_HZ


def _excerpt(x: np.ndarray, rate: float) -> np.ndarray | None:
    x = np.asarray(x, dtype=np.float64).reshape(-1)[: int(MAX_SECONDS * rate)]
    x = x[np.isfinite(x)]
    if x.size < MIN_SECONDS * rate or np.ptp(x) == 0:
        return None
    return x - x.mean()


def dominant_bpm(x: np.ndarray, rate: float) -> float | None:
    """The dominant rhythm of ``x`` (samples at ``rate`` Hz) in beats per minute, or None when
    the recording is too short or shows no periodicity between 5 and 600 bpm."""
    x = _excerpt(x, rate)
    if x is None:
        return None
    # The rhythm of the signal's slope: QRS complexes and pulse upstrokes, not baseline wander
    # (whose slope is small); smoothed over 0.25 s so that an irregular rhythm still correlates.
    k = max(1, int(0.25 * rate))
    x = np.convolve(np.abs(np.diff(x)), np.ones(k) / k, mode="same")
    x = x - x.mean()
    n = x.size
    spectrum = np.fft.rfft(x, 2 * n)
    acf = np.fft.irfft(spectrum * np.conj(spectrum))[:n]
    if acf[0] <= 0:
        return None
    acf /= acf[0]
    lo = max(1, int(rate * 60 / SEARCH_BPM[1]))
    hi = min(n // 2, int(rate * 60 / SEARCH_BPM[0]))
    if hi - lo < 3:
        return None
    seg = acf[lo : hi + 1]
    peaks = np.flatnonzero((seg[1:-1] > seg[:-2]) & (seg[1:-1] >= seg[2:]) & (seg[1:-1] > 0.1)) + 1
    if peaks.size == 0:
        return None
    strongest = seg[peaks].max()
    first = peaks[seg[peaks] >= 0.6 * strongest][0]  # the fundamental, not a multiple of it
    return float(60.0 * rate / (lo + first))


def sharp_share(x: np.ndarray, rate: float) -> float | None:
    """The share of the 0.5-40 Hz power above :data:`SHARP_HZ` (None: rate too low to tell)."""
    x = _excerpt(x, rate)
    top = min(40.0, rate / 2)
    if x is None or top <= SHARP_HZ * 1.5:
        return None
    power = np.abs(np.fft.rfft(x * np.hanning(x.size))) ** 2
    freq = np.fft.rfftfreq(x.size, 1 / rate)
    band = (freq >= 0.5) & (freq <= top)
    total = power[band].sum()
    if total <= 0:
        return None
    return float(power[band & (freq >= SHARP_HZ)].sum() / total)


def evident_modality(x: np.ndarray, rate: float) -> tuple[str | None, float | None]:
    """'ecg', 'ppg' or None (undecided), and the sharp-power share it was judged on."""
    share = sharp_share(x, rate)
    if share is None:
        return None, None
    if share >= ECG_SHARE:
        return "ecg", share
    if share <= PPG_SHARE:
        return "ppg", share
    return None, share


def assess(x: np.ndarray, rate: float) -> Plausibility:
    """Both checks of one recording at its own rate."""
    modality, share = evident_modality(x, rate)
    return Plausibility(dominant_bpm(x, rate), modality, share)


def rate_problem(p: Plausibility, rate: float) -> str | None:
    """The warning for a dominant rhythm outside 25-250 bpm, else None."""
    if p.bpm is None or PLAUSIBLE_BPM[0] <= p.bpm <= PLAUSIBLE_BPM[1]:
        return None
    return (f"dominant rhythm {p.bpm:.0f} bpm at {rate:g} Hz is outside "
            f"{PLAUSIBLE_BPM[0]:g}-{PLAUSIBLE_BPM[1]:g} bpm: is the sampling rate right?")


def modality_problem(p: Plausibility, modality: str) -> str | None:
    """The complaint when the signal evidently is the other modality, else None."""
    if p.modality is None or p.modality == modality:
        return None
    return (f"looks like {p.modality.upper()}, not {modality.upper()} "
            f"({100 * p.sharp_share:.1f}% of its 0.5-40 Hz power is above {SHARP_HZ:g} Hz; "
            f"ECG has >= {100 * ECG_SHARE:g}%, PPG <= {100 * PPG_SHARE:g}%)")


@dataclass(frozen=True)
class Problems:
    """What :func:`recording_problems` found (None: nothing to say)."""

    rate: str | None
    modality: str | None  # None also when ``rate`` is set: a wrong rate distorts the morphology

    def warnings(self) -> list[str]:
        return [p for p in (self.rate, self.modality) if p]


def recording_problems(signal: np.ndarray, sample_rate: float, modality: str) -> Problems:
    """Both checks of a recording at ``sample_rate`` Hz, judged after resampling to the rate of
    ``modality`` (as the model sees it); NaN/inf samples are ignored."""
    from heartgpt.data.tokenizer import get_modality, resample

    rate = get_modality(modality).sample_rate
    x = np.asarray(signal, dtype=np.float64).reshape(-1)[: int(MAX_SECONDS * sample_rate) + 1]
    ok = np.isfinite(x)
    if not ok.any():
        return Problems(None, None)
    x = resample(np.where(ok, x, np.median(x[ok])), sample_rate, rate)
    seen = assess(x, rate)
    wrong_rate = rate_problem(seen, rate)
    return Problems(wrong_rate, None if wrong_rate else modality_problem(seen, modality))


def check_recording(source: str | os.PathLike, signal: np.ndarray, sample_rate: float,
                    modality: str, *, stated: bool) -> list[str]:
    """The warnings a tool prints for a recording, after refusing one that evidently is the
    other modality when the user did not state its modality (``stated``: they did, and are
    trusted, with a warning).

    Raises:
        InputError: ``<source>: looks like PPG, not ECG (...)``, with how to insist.
    """
    problems = recording_problems(signal, sample_rate, modality)
    if problems.modality and not stated:
        raise InputError(source, f"{problems.modality}; the checkpoint is a {modality.upper()} "
                                 f"model (give --modality {modality} / modality={modality} if "
                                 "the recording really is one)")
    return problems.warnings()
