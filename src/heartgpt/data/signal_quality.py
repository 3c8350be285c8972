"""Signal quality of one model window (raw samples at the model's rate, before tokenising).

Every window a model scores can be judged here, ECG or PPG, with no model. Each check gives a
score; a score past its threshold (``conf/trust/default.yaml``, ``quality:``) makes the window
``unreliable`` with a short reason. A threshold set to null switches its check off.

Checks (name: what it catches; source):

- ``nan``: a non-finite sample (nothing else is judged then).
- ``flat``: the longest run of unchanged samples, in seconds (sensor drop-out).
- ``clipped``: the share of samples in plateaus (>= ``clip_min_run`` samples changing by at
  most ``clip_tolerance`` of the range per step) in the top or bottom ``clip_zone`` of the
  range: an amplifier or ADC at its rail.
- ``amplitude``: the window's interquartile range against the recording's median one (only when
  the caller gives it: :func:`recording_quality` does): a loose sensor or motion burst.
- ``heart rate``: beats from neurokit2's detectors (:func:`heartgpt.data.rhythm.find_beats`)
  or the caller's, as bpm within ``hr_bpm``: no heart at this rate, e.g. a wrong sampling rate.
- ``template``: the mean correlation of each beat with the window's average beat
  (``neurokit2.ppg_quality`` / ``ecg_quality`` method 'templatematch', after Orphanidou et al.
  2015): noise and artefacts.
- ``skewness`` (PPG): Elgendi 2016's best PPG index, S_SQI; a pulse rises fast and decays
  slowly, so an inverted PPG has negative skewness.
- ``slope skewness`` (PPG): skewness of the first difference. A pulse rises faster than it
  decays (crest time ~0.1-0.2 s of a ~0.8 s beat), so the slope is positively skewed; an
  inverted PPG's is negative. Separates polarity where S_SQI does not (bench/trust_flags.py).
- ``kurtosis`` (ECG): kSQI of Li, Mark & Clifford 2008 (Pearson kurtosis; clean ECG > 5).
- ``sharp share``: the share of 0.5-40 Hz power above 8 Hz
  (:func:`heartgpt.data.plausibility.sharp_share`): ECG's QRS complexes have it, a PPG has
  almost none: catches ECG fed to a PPG model (and noise), and PPG fed to an ECG model.
- ``baseline``: basSQI (Li et al. 2008; as in neurokit2's zhao2018 method):
  ``1 - P(0-baseline_hz) / P(0-40 Hz)`` of the raw window (Welch, ``scipy.signal.welch``).
- ``beat confidence`` (PPG, optional): the beat model's median peak confidence for the window,
  given by the caller (the released GUI's Low/Medium boundary is 0.2051).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
from scipy.stats import kurtosis, skew

from heartgpt.data.plausibility import sharp_share
from heartgpt.data.rhythm import RhythmSettings, find_beats
from heartgpt.errors import ConfigError


@dataclass(frozen=True)
class QualitySettings:
    """One modality's ``quality:`` block (common keys merged in); null disables a check."""

    flat_seconds: float | None
    flat_tolerance: float
    clip_tolerance: float
    clip_min_run: int
    clip_zone: float
    clip_fraction: float | None
    amplitude_ratio: float | None
    hr_bpm: list | None
    template_min: float | None
    skewness_min: float | None
    slope_skewness_min: float | None
    kurtosis_min: float | None
    sharp_share_min: float | None
    sharp_share_max: float | None
    baseline_hz: float
    bassqi_min: float | None
    beat_confidence_min: float | None


@dataclass(frozen=True)
class TrustSettings:
    """``conf/trust/<name>.yaml``: quality settings per modality and the rhythm settings."""

    quality: dict  # 'ecg' | 'ppg' -> QualitySettings
    rhythm: RhythmSettings


def trust_settings(cfg: dict, where: str = "trust") -> TrustSettings:
    """Build :class:`TrustSettings` from a mapping (a loaded yaml or a composed ``cfg.trust``).

    Raises:
        ConfigError: a missing or unknown key, named with its path.
    """
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            cfg = OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    for key in ("quality", "rhythm"):
        if key not in cfg:
            raise ConfigError(f"{where}.{key}", "missing")
    names = {f.name for f in fields(QualitySettings)}
    quality = {}
    for modality in ("ecg", "ppg"):
        merged = {**cfg["quality"].get("common", {}), **cfg["quality"].get(modality, {})}
        missing, extra = names - set(merged), set(merged) - names
        if missing or extra:
            raise ConfigError(f"{where}.quality.{modality}", f"(with common) missing keys "
                              f"{sorted(missing)}, unknown keys {sorted(extra)}")
        quality[modality] = QualitySettings(**merged)
    return TrustSettings(quality, RhythmSettings.from_config(cfg["rhythm"], f"{where}.rhythm"))


def load_trust(name_or_path: str | Path = "default") -> TrustSettings:
    """``conf/trust/<name>.yaml`` (or a yaml file path) as :class:`TrustSettings`."""
    from omegaconf import OmegaConf

    from heartgpt.conf import CONF_DIR

    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = CONF_DIR / "trust" / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(str(path), "no such trust config")
    return trust_settings(OmegaConf.to_container(OmegaConf.load(path), resolve=True), str(path))


@dataclass(frozen=True)
class WindowQuality:
    """The verdict on one window: every score computed, and why it is unreliable ('' if not)."""

    unreliable: bool
    reason: str
    scores: dict

    def as_dict(self) -> dict:
        return {"unreliable": self.unreliable, "reason": self.reason, **self.scores}


def _longest_run(mask: np.ndarray) -> int:
    if not mask.any():
        return 0
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return int((np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)).max())


def _plateau_share(x: np.ndarray, tol: float, min_run: int, zone: float) -> float:
    """Share of samples in plateaus: runs of >= ``min_run`` samples changing by at most ``tol``
    per step whose level lies in the top or bottom ``zone`` of the window's range (a clipped
    signal after resampling overshoots its plateau slightly, so the plateau is not the max)."""
    lo, rng = float(x.min()), float(np.ptp(x))
    still = np.abs(np.diff(x)) <= tol
    edges = np.diff(np.concatenate([[0], still.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    total = 0
    for a, b in zip(starts, ends, strict=True):
        if b - a + 1 >= min_run:
            level = (float(np.mean(x[a : b + 1])) - lo) / rng
            if level >= 1 - zone or level <= zone:
                total += b - a + 1
    return total / x.size


def _template(x: np.ndarray, beats: np.ndarray, fs: int, modality: str) -> float:
    import neurokit2 as nk

    if beats.size < 3:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if modality == "ppg":
                q = nk.ppg_quality(nk.ppg_clean(x, sampling_rate=fs), peaks=beats,
                                   sampling_rate=fs, method="templatematch")
            else:
                q = nk.ecg_quality(nk.ecg_clean(x, sampling_rate=fs), rpeaks=beats,
                                   sampling_rate=fs, method="templatematch")
        except (IndexError, TypeError, ValueError, ZeroDivisionError):  # too short, no peak
            return float("nan")
    q = np.asarray(q, dtype=np.float64)
    return float(np.nanmean(q)) if np.isfinite(q).any() else float("nan")


def _bassqi(x: np.ndarray, fs: int, baseline_hz: float) -> float:
    from scipy.signal import welch

    freq, power = welch(x, fs=fs, nperseg=min(x.size, int(8 * fs)))  # DC removed per segment
    total = float(power[freq <= 40.0].sum())
    return 1.0 - float(power[freq <= baseline_hz].sum()) / total if total > 0 else float("nan")


def quality_scores(x: np.ndarray, rate: float, modality: str, s: QualitySettings, *,
                   beats: np.ndarray | None = None, reference_amplitude: float | None = None,
                   beat_confidence: float | None = None) -> dict:
    """Every score of one finite window ``x`` (samples at ``rate`` Hz)."""
    fs = round(rate)
    rng = float(np.ptp(x))
    tol = s.flat_tolerance * rng if rng > 0 else 0.0
    out: dict = {"flat_s": _longest_run(np.abs(np.diff(x)) <= tol) / rate}
    if rng > 0:
        out["clipped_share"] = _plateau_share(x, s.clip_tolerance * rng, s.clip_min_run,
                                              s.clip_zone)
    else:
        out["clipped_share"] = 1.0
    q25, q75 = np.percentile(x, [25, 75])
    out["amplitude_ratio"] = (float((q75 - q25) / reference_amplitude)
                              if reference_amplitude and reference_amplitude > 0 else float("nan"))
    if rng == 0:
        return out
    if beats is None:
        beats = find_beats(x, rate, modality)
    beats = np.asarray(beats, dtype=np.int64)
    out["beats"] = int(beats.size)
    out["heart_rate_bpm"] = (float(60.0 * rate / np.median(np.diff(beats)))
                             if beats.size >= 2 else float("nan"))
    out["template"] = _template(x, beats, fs, modality)
    out["skewness"] = float(skew(x))
    out["slope_skewness"] = float(skew(np.diff(x)))
    out["kurtosis"] = float(kurtosis(x, fisher=False))
    share = sharp_share(x, rate)
    out["sharp_share"] = float("nan") if share is None else share
    out["bassqi"] = _bassqi(x, fs, s.baseline_hz)
    out["beat_confidence"] = float("nan") if beat_confidence is None else float(beat_confidence)
    return out


def _reasons(sc: dict, modality: str, s: QualitySettings) -> list[str]:
    """The failed checks, in order of how plainly they explain the window."""
    def get(k: str) -> float:
        return sc.get(k, float("nan"))

    r = []
    if s.flat_seconds is not None and get("flat_s") >= s.flat_seconds:
        r.append("flat")
    if s.clip_fraction is not None and get("clipped_share") >= s.clip_fraction:
        r.append("clipped")
    a = get("amplitude_ratio")
    if s.amplitude_ratio is not None and np.isfinite(a) and not (
            1 / s.amplitude_ratio <= a <= s.amplitude_ratio):
        r.append("amplitude")
    if r and "beats" not in sc:
        return r
    if s.sharp_share_max is not None and get("sharp_share") > s.sharp_share_max:
        r.append("too sharp (QRS-like, noise or wrong rate)")
    if s.sharp_share_min is not None and get("sharp_share") < s.sharp_share_min:
        r.append("too smooth (no QRS, or wrong rate)")
    if s.hr_bpm is not None:
        hr = get("heart_rate_bpm")
        if not (np.isfinite(hr) and s.hr_bpm[0] <= hr <= s.hr_bpm[1]):
            r.append("implausible heart rate")
    if s.slope_skewness_min is not None and get("slope_skewness") < s.slope_skewness_min:
        r.append("inverted (slope skewness)")
    if s.skewness_min is not None and get("skewness") < s.skewness_min:
        r.append("low quality (skewness)")
    if s.kurtosis_min is not None and get("kurtosis") < s.kurtosis_min:
        r.append("low quality (kurtosis)")
    if s.bassqi_min is not None and get("bassqi") < s.bassqi_min:
        r.append("baseline wander")
    if s.template_min is not None and not get("template") >= s.template_min:
        r.append("low quality (template)")
    if s.beat_confidence_min is not None and get("beat_confidence") < s.beat_confidence_min:
        r.append("low beat confidence")
    return r


def window_quality(x: np.ndarray, rate: float, modality: str, settings: TrustSettings, *,
                   beats: np.ndarray | None = None, reference_amplitude: float | None = None,
                   beat_confidence: float | None = None) -> WindowQuality:
    """Judge one window ``x`` (raw samples at the model's ``rate`` Hz, before tokenising).

    Args:
        beats: beat sample indices within the window (e.g. the PPG beat model's); None: found
            by neurokit2.
        reference_amplitude: the recording's typical window interquartile range (for the
            ``amplitude`` check; None: not judged).
        beat_confidence: the beat model's median peak confidence over the window (PPG; None:
            not judged).
    """
    if modality not in settings.quality:
        raise ValueError(f"modality must be 'ecg' or 'ppg', not {modality!r}")
    s = settings.quality[modality]
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    if not np.isfinite(x).all():
        return WindowQuality(True, "nan", {"nan_share": float(np.mean(~np.isfinite(x)))})
    sc = quality_scores(x, rate, modality, s, beats=beats,
                        reference_amplitude=reference_amplitude, beat_confidence=beat_confidence)
    reasons = _reasons(sc, modality, s)
    return WindowQuality(bool(reasons), "; ".join(reasons), sc)


def recording_quality(windows: np.ndarray, rate: float, modality: str, settings: TrustSettings,
                      *, beats: list | None = None,
                      beat_confidence: np.ndarray | None = None) -> list[WindowQuality]:
    """:func:`window_quality` of every row of ``windows`` (k, n), with the amplitude check
    against the median interquartile range of the recording's finite windows.

    ``beats``: per window beat indices (or None); ``beat_confidence``: (k,) per window."""
    windows = np.asarray(windows, dtype=np.float64)
    finite = np.isfinite(windows).all(axis=1)
    iqr = np.full(len(windows), np.nan)
    if finite.any():
        q = np.percentile(windows[finite], [25, 75], axis=1)
        iqr[finite] = q[1] - q[0]
    ref = float(np.nanmedian(iqr)) if finite.any() else None
    out = []
    for i, w in enumerate(windows):
        out.append(window_quality(
            w, rate, modality, settings, beats=None if beats is None else beats[i],
            reference_amplitude=ref,
            beat_confidence=None if beat_confidence is None else float(beat_confidence[i])))
    return out
