"""SYNTHETIC demo recordings with labels for any head: heart rate, rhythm class, heart rate every 2 s.

Each subject is in one of three rhythms: ``sinus`` (regular RR, respiratory modulation),
``af`` (irregularly irregular RR, no P wave, f-waves: :mod:`heartgpt.data.demo`'s AF-like
rhythm) or ``ectopic`` (sinus rhythm with frequent premature beats, each followed by a
compensatory pause), and its heart rate drifts slowly over the recording. The recording is cut
into files of one model window each (5 s of ECG, 10 s of PPG) and written the way a user's
data would be, so that ``make data`` prepares them through ``labels_csv`` like any recordings:

- ``<name>.npy``: the signal at its native rate (ECG 500 Hz, PPG 125 Hz);
- ``labels.csv``: ``record, subject, hr_bpm, rhythm`` (``hr_bpm``: 60 / the mean RR interval of
  the beats inside the file);
- ``<name>_hr.csv``: ``hr_bpm`` of every 2 s of the file, from the RR intervals that end in
  those 2 s and start inside the file (blank when there is none).

Because beats are drawn first, every label is exact. Nothing here is real patient data.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from heartgpt.data.demo import NATIVE_RATE, _ecg, _noise, _ppg, _rr_intervals
from heartgpt.files import atomic_path

RHYTHMS = ("sinus", "af", "ectopic")
HR_SECONDS = 2.0  # one heart-rate value per this many seconds (the tag task's stride)
TARGETS_SOURCE = (
    "SYNTHETIC demo targets (heartgpt.data.demo_targets; simulated {modality}, {subjects} "
    "simulated subjects in sinus, AF-like or ectopic rhythm, seed {seed}) - not real recordings"
)
_STREAM = {"ecg": 11, "ppg": 12}


@dataclass(frozen=True)
class TargetSubject:
    """The drawn parameters of one subject of the targets demo."""

    name: str
    rhythm: str
    heart_rate: float  # bpm at the start; it drifts
    rng_seed: int


def draw_target_subjects(modality: str, subjects: int, seed: int) -> list[TargetSubject]:
    """``subjects`` subjects, a third in each rhythm, in random order."""
    rng = np.random.default_rng([seed, _STREAM[modality]])
    rhythms = np.array([RHYTHMS[i % 3] for i in range(subjects)])[rng.permutation(subjects)]
    return [TargetSubject(f"synth-{modality}-t{i:03d}", str(r), float(rng.uniform(55, 110)),
                          int(rng.integers(2**31))) for i, r in enumerate(rhythms)]


def beat_times(rng: np.random.Generator, seconds: float, heart_rate: float, rhythm: str) -> np.ndarray:
    """Beat times (s) of ``rhythm`` covering ``seconds``, the rate drifting by up to ~15 %."""
    times = _rr_intervals(rng, seconds, heart_rate, af=rhythm == "af")
    rr = np.diff(times)
    period, phase, depth = rng.uniform(20, 60), rng.uniform(0, 2 * np.pi), rng.uniform(0.05, 0.15)
    rr = rr / (1 + depth * np.sin(2 * np.pi * times[1:] / period + phase))  # rate drift
    if rhythm == "ectopic":  # a premature beat every 2-5 beats, then a compensatory pause
        i = int(rng.integers(2, 5))
        while i + 1 < len(rr):
            early = rng.uniform(0.55, 0.7)
            total = rr[i] + rr[i + 1]
            rr[i], rr[i + 1] = rr[i] * early, total - rr[i] * early
            i += int(rng.integers(3, 6))
    times = times[0] + np.concatenate([[0.0], np.cumsum(rr)])
    return times[times < seconds + 2.0]


def heart_rate(beats: np.ndarray, start: float, stop: float, seen_from: float | None = None) -> float:
    """60 / the mean RR interval ending at the beats in ``start .. stop`` s (NaN: none); with
    ``seen_from``, only intervals that start at or after it (both beats in the recording)."""
    index = np.arange(len(beats))
    inside = np.flatnonzero((beats >= start) & (beats < stop) & (index > 0))
    if seen_from is not None:
        inside = inside[beats[inside - 1] >= seen_from]
    if not inside.size:
        return float("nan")
    return float(60.0 / np.mean(beats[inside] - beats[inside - 1]))


def write_target_recordings(out_dir: str | Path, modality: str, *, subjects: int,
                            records_per_subject: int, seed: int) -> Path:
    """Write the subjects' files, ``labels.csv`` and the ``_hr.csv`` sidecars into ``out_dir``;
    returns the labels CSV. Files are one window long (500 tokens at the modality rate)."""
    from heartgpt.data.tokenizer import get_modality

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fs = NATIVE_RATE[modality]
    record_seconds = 500 / get_modality(modality).sample_rate
    rows = []
    for subject in draw_target_subjects(modality, subjects, seed):
        rng = np.random.default_rng(subject.rng_seed)
        seconds = record_seconds * records_per_subject
        n = round(seconds * fs)
        beats = beat_times(rng, seconds, subject.heart_rate, subject.rhythm)
        af = subject.rhythm == "af"
        clean = _ecg(rng, beats, af, n, fs) if modality == "ecg" else _ppg(rng, beats, af, n, fs)[0]
        signal = _noise(rng, clean, fs)
        per_file = round(record_seconds * fs)
        for k in range(records_per_subject):
            name = f"{subject.name}-{k:02d}"
            t0 = k * record_seconds
            with atomic_path(out_dir / f"{name}.npy") as tmp, open(tmp, "wb") as f:
                np.save(f, signal[k * per_file : (k + 1) * per_file].astype(np.float32))
            steps = np.arange(0.0, record_seconds, HR_SECONDS)
            with atomic_path(out_dir / f"{name}_hr.csv") as tmp, open(tmp, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["hr_bpm"])
                for a in steps:  # from the beats of this file: what a model of it can see
                    hr = heart_rate(beats, t0 + a, t0 + a + HR_SECONDS, seen_from=t0)
                    writer.writerow(["" if np.isnan(hr) else f"{hr:.2f}"])
            hr = heart_rate(beats, t0, t0 + record_seconds)
            rows.append([name, subject.name, f"{hr:.2f}", subject.rhythm])
    labels = out_dir / "labels.csv"
    with atomic_path(labels) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["record", "subject", "hr_bpm", "rhythm"])
        writer.writerows(rows)
    return labels
