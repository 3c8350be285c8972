"""SYNTHETIC demo data: physiologically shaped ECG and PPG with known beats and AF labels.

Nothing here is real patient data. Every subject gets its own heart rate, heart-rate
variability, waveform morphology and noise, and is either in sinus rhythm (label 0: regular RR
intervals with respiratory and low-frequency modulation of a few per cent) or in an AF-like
rhythm (label 1: irregularly irregular RR intervals; for ECG also no P wave and fibrillatory
f-waves). Because the beat times are drawn first, the per-sample beat targets are exact.

How the signals are made (neurokit2's own simulators cannot take a given RR series or drop the
P wave, and ECGSYN is ~0.4 s per subject):

- ECG: a sum of Gaussian waves per beat (P, Q, R, S, T; the Gaussian-wave morphology of the
  ECGSYN model that ``neurokit2.ecg_simulate`` uses), placed at the drawn R times, T wave timed
  by Bazett's QT scaling; generated at 500 Hz.
- PPG: neurokit2's PPG landmark model (onset, systolic peak, dicrotic notch, diastolic peak per
  beat, joined by ``neurokit2.signal_interpolate(method="akima")``) at the drawn pulse times,
  pulse amplitude depending on the preceding interval (Frank-Starling); generated at 125 Hz.
- Noise: ``neurokit2.signal_distort`` (Laplace noise at several frequencies) plus baseline
  wander.

The recordings then go through the same resample -> segment -> tokenise path as real data.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from heartgpt.data.pipeline import SegmentSpec, SummaryCounter, segment_recording, write_results
from heartgpt.data.recording import Recording
from heartgpt.data.shard_writer import ShardWriter
from heartgpt.data.shards import Manifest, ShardMeta
from heartgpt.data.tokenizer import LEVELS, get_modality

NATIVE_RATE = {"ecg": 500.0, "ppg": 125.0}  # Hz the signals are synthesised at
SOURCE = (
    "SYNTHETIC demo data (heartgpt.data.demo; neurokit2-based simulated {modality}, "
    "{subjects} simulated subjects, seed {seed}) - not real recordings"
)
_MODALITY_STREAM = {"ecg": 1, "ppg": 2}


@dataclass(frozen=True)
class Subject:
    """The drawn parameters of one synthetic subject."""

    name: str
    af: bool
    heart_rate: float  # bpm
    rng_seed: int


def _rr_intervals(rng: np.random.Generator, seconds: float, heart_rate: float, af: bool) -> np.ndarray:
    """Beat times (s) covering ``seconds``: regular sinus rhythm or irregular AF-like rhythm."""
    mean_rr = 60.0 / heart_rate
    n = int((seconds + 3) / mean_rr * 1.6) + 8
    if af:
        # Irregularly irregular: independent intervals, coefficient of variation ~0.2-0.3.
        spread = rng.uniform(0.35, 0.5)
        rr = mean_rr * rng.uniform(1 - spread, 1 + spread, n)
    else:
        approx_t = np.arange(n) * mean_rr
        f_resp, f_lf = rng.uniform(0.2, 0.33), rng.uniform(0.08, 0.12)
        rsa, lf = rng.uniform(0.02, 0.05), rng.uniform(0.01, 0.03)
        rr = mean_rr * (
            1
            + rsa * np.sin(2 * np.pi * f_resp * approx_t + rng.uniform(0, 2 * np.pi))
            + lf * np.sin(2 * np.pi * f_lf * approx_t + rng.uniform(0, 2 * np.pi))
            + rng.normal(0, 0.01, n)
        )
    rr = np.clip(rr, 0.3, 2.0)
    # Start before t=0 so the signal is covered by whole beats from its first sample.
    times = -rng.uniform(1.5, 2.5) + np.concatenate([[0.0], np.cumsum(rr)])
    return times[times < seconds + 2.0]


def _gauss(out: np.ndarray, t: np.ndarray, centre: float, sigma: float, amp: float, fs: float) -> None:
    """Add ``amp * exp(-(t - centre)^2 / 2 sigma^2)`` to ``out`` over +-5 sigma (in place)."""
    lo = max(0, int((centre - 5 * sigma) * fs))
    hi = min(len(out), int((centre + 5 * sigma) * fs) + 2)
    if lo < hi:
        out[lo:hi] += amp * np.exp(-0.5 * ((t[lo:hi] - centre) / sigma) ** 2)


def _ecg(rng: np.random.Generator, beats: np.ndarray, af: bool, n: int, fs: float) -> np.ndarray:
    """Clean ECG from R times ``beats`` (s): Gaussian P-QRS-T waves per beat."""
    t = np.arange(n) / fs
    x = np.zeros(n)
    # Subject morphology (ECGSYN-like wave set, amplitudes in mV-ish units, times in s).
    p_amp, p_at, p_w = rng.uniform(0.08, 0.25), rng.uniform(0.14, 0.2), rng.uniform(0.02, 0.03)
    q_amp, r_amp, s_amp = -rng.uniform(0.05, 0.2), rng.uniform(0.7, 1.3), -rng.uniform(0.1, 0.4)
    r_w = rng.uniform(0.009, 0.015)
    t_amp = rng.uniform(0.15, 0.45) * (-0.5 if rng.random() < 0.12 else 1.0)
    t_w, qt = rng.uniform(0.04, 0.07), rng.uniform(0.26, 0.32)
    rr = np.diff(beats, prepend=beats[0] - np.median(np.diff(beats)))
    for b, interval in zip(beats, rr, strict=True):
        if not af:
            _gauss(x, t, b - p_at, p_w, p_amp, fs)
        _gauss(x, t, b - 0.028, 0.01, q_amp, fs)
        _gauss(x, t, b, r_w, r_amp, fs)
        _gauss(x, t, b + 0.03, 0.012, s_amp, fs)
        _gauss(x, t, b + qt * np.sqrt(np.clip(interval, 0.3, 2.0)), t_w, t_amp, fs)  # Bazett
    if af:  # fibrillatory waves: a few 4-9 Hz components, slowly amplitude-modulated
        f_amp = rng.uniform(0.03, 0.08)
        for _ in range(3):
            f = rng.uniform(4, 9)
            env = 1 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.1, 0.4) * t + rng.uniform(0, 6.3))
            x += f_amp / 3 * env * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
    return x


def _ppg(
    rng: np.random.Generator, beats: np.ndarray, af: bool, n: int, fs: float
) -> tuple[np.ndarray, np.ndarray]:
    """Clean PPG from heart-beat times ``beats`` (s) and the sample of each systolic peak."""
    import neurokit2 as nk

    ptt = rng.uniform(0.15, 0.25)  # pulse transit time from R to pulse onset
    sys_frac, notch_frac, dia_frac = rng.uniform(0.14, 0.21), rng.uniform(0.36, 0.42), rng.uniform(0.45, 0.52)
    notch_rel, dia_rel = rng.uniform(0.4, 0.6), rng.uniform(0.45, 0.65)
    onsets = beats + ptt
    periods = np.diff(onsets, append=onsets[-1] + np.median(np.diff(onsets)))
    mean_rr = float(np.median(periods))
    prev = np.concatenate([[mean_rr], periods[:-1]])
    amp = np.clip(0.6 + 0.4 * prev / mean_rr, 0.5, 1.3) if af else np.ones_like(periods)
    amp = amp * (1 + rng.normal(0, 0.02, len(periods)))
    y_on = rng.normal(0, 0.03, len(periods))
    y_sys = y_on + amp
    xs = np.stack([onsets, onsets + sys_frac * periods, onsets + notch_frac * periods,
                   onsets + dia_frac * periods], axis=1).reshape(-1) * fs
    ys = np.stack([y_on, y_sys, y_on + notch_rel * amp, y_on + dia_rel * amp], axis=1).reshape(-1)
    ppg = nk.signal_interpolate(xs, ys, x_new=np.arange(n), method="akima")
    ppg = np.nan_to_num(ppg, nan=float(np.nanmean(ppg)))
    # The beat sample is the clean waveform's maximum near each systolic landmark.
    half = max(1, int(0.08 * fs))
    peaks = []
    for c in xs[1::4]:
        if 0 <= c < n:
            lo, hi = max(0, int(c) - half), min(n, int(c) + half + 1)
            peaks.append(lo + int(np.argmax(ppg[lo:hi])))
    return ppg, np.asarray(peaks, dtype=np.int64)


def _noise(rng: np.random.Generator, x: np.ndarray, fs: float) -> np.ndarray:
    """Baseline wander + neurokit2's Laplace noise, per-subject levels."""
    import neurokit2 as nk

    t = np.arange(len(x)) / fs
    wander = rng.uniform(0.03, 0.2) * np.sin(2 * np.pi * rng.uniform(0.05, 0.3) * t + rng.uniform(0, 6.3))
    noisy = nk.signal_distort(
        x, sampling_rate=int(fs), noise_shape="laplace",
        noise_amplitude=rng.uniform(0.005, 0.04),
        noise_frequency=[min(f, fs / 2 - 1) for f in (2.0, 10.0, 40.0)],
        random_state=int(rng.integers(2**31)), silent=True,
    )
    return np.asarray(noisy) + wander


def draw_subjects(modality: str, subjects: int, seed: int) -> list[Subject]:
    """The demo's subjects: half AF-like, half sinus rhythm, in random order."""
    rng = np.random.default_rng([seed, _MODALITY_STREAM[modality]])
    af = np.zeros(subjects, dtype=bool)
    af[rng.permutation(subjects)[: subjects // 2]] = True
    out = []
    for i in range(subjects):
        hr = rng.uniform(70, 115) if af[i] else rng.uniform(55, 95)
        out.append(Subject(f"synth-{modality}-{i:03d}", bool(af[i]), float(hr), int(rng.integers(2**31))))
    return out


def synthesize(subject: Subject, modality: str, seconds: float) -> Recording:
    """One subject's recording at its native rate, with label and beat sample indices."""
    fs = NATIVE_RATE[modality]
    rng = np.random.default_rng(subject.rng_seed)
    n = round(seconds * fs)
    beats = _rr_intervals(rng, seconds, subject.heart_rate, subject.af)
    if modality == "ecg":
        clean = _ecg(rng, beats, subject.af, n, fs)
        peaks = np.round(beats * fs).astype(np.int64)
        peaks = peaks[(peaks >= 0) & (peaks < n)]
    else:
        clean, peaks = _ppg(rng, beats, subject.af, n, fs)
    signal = _noise(rng, clean, fs)
    return Recording(
        name=subject.name, path=Path(subject.name), signal=signal, sample_rate=fs,
        subject=subject.name, label=float(subject.af), beats=peaks,
    )


def _meta(modality: str, label_kind: str, length: int, source: str, tokenizer: dict) -> ShardMeta:
    mod = get_modality(modality)
    return ShardMeta(
        modality=mod.name, sample_rate=mod.sample_rate, vocab_size=mod.vocab_size,
        segment_length=length, label_kind=label_kind, source=source, synthetic=True, tokenizer=tokenizer,
    )


def build_demo(
    out_dir: str | Path,
    modality: str,
    *,
    subjects: int,
    seconds: float,
    seed: int,
    pretrain_samples: int,
    finetune_samples: int,
    finetune_stride: int,
    beat_tolerance: int,
    rows_per_shard: int,
) -> dict[str, Manifest]:
    """Write ``<out_dir>/{pretrain,af,beats}`` shard sets of SYNTHETIC ``modality`` data.

    ``pretrain``: segments of ``pretrain_samples`` (no overlap); ``af``: ``finetune_samples``
    windows every ``finetune_stride`` samples with the subject's AF label; ``beats``: the same
    windows with per-token beat targets (R peaks for ECG, systolic peaks for PPG).
    """
    mod = get_modality(modality)
    out_dir = Path(out_dir)
    source = SOURCE.format(modality=mod.name.upper(), subjects=subjects, seed=seed)
    plans = {
        "pretrain": ("unlabelled", SegmentSpec(pretrain_samples, pretrain_samples)),
        "af": ("sequence", SegmentSpec(finetune_samples, finetune_stride)),
        "beats": ("token", SegmentSpec(finetune_samples, finetune_stride)),
    }
    writers, counters = {}, {}
    for name, (label_kind, seg) in plans.items():
        tok = {"method": "minmax-per-segment", "levels": LEVELS, "resample": "scipy.signal.resample_poly",
               "segment_stride": seg.stride, "native_rate": NATIVE_RATE[mod.name],
               "beat_tolerance": beat_tolerance if label_kind == "token" else None}
        writers[name] = ShardWriter(out_dir / name, _meta(mod.name, label_kind, seg.length, source, tok), rows_per_shard)
        counters[name] = SummaryCounter(out_dir / name, subjects)
    try:
        for subj in draw_subjects(mod.name, subjects, seed):
            rec = synthesize(subj, mod.name, seconds)
            for name, (label_kind, seg) in plans.items():
                r = segment_recording(rec, mod.name, label_kind, seg, tolerance=beat_tolerance)
                write_results([r], writers[name], counters[name])
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    return {
        name: w.commit(counters[name].finish(w.pending_shards).to_json()) for name, w in writers.items()
    }


def build_demo_all(
    data_dir: str | Path, modalities: list[str], **kwargs
) -> tuple[dict[str, dict[str, Manifest]], float]:
    """Build ``<data_dir>/demo/<modality>/...`` for each modality; return manifests and seconds."""
    t0 = time.perf_counter()
    out = {m: build_demo(Path(data_dir) / "demo" / m, m, **kwargs) for m in modalities}
    return out, time.perf_counter() - t0
