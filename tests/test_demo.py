"""The SYNTHETIC demo data: what it holds, that its labels are clean, and that it is fast."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from scipy.signal import find_peaks

from heartgpt.data.demo import build_demo
from heartgpt.data.shards import read_manifest, read_shards, validate_shard_dir

SMALL = dict(subjects=6, seconds=40, seed=0, pretrain_samples=1000, finetune_samples=500,
             finetune_stride=100, beat_tolerance=0, rows_per_shard=64)


@pytest.fixture(scope="module", params=["ecg", "ppg"])
def demo(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"demo-{request.param}")
    build_demo(out, request.param, **SMALL)
    return request.param, out


def test_three_synthetic_sets(demo):
    modality, out = demo
    rate = {"ecg": 100, "ppg": 50}[modality]
    for name, label_kind, length in [("pretrain", "unlabelled", 1000), ("af", "sequence", 500), ("beats", "token", 500)]:
        m = validate_shard_dir(out / name, modality=modality, label_kind=label_kind, verify_checksums=True)
        assert m.meta.synthetic and "SYNTHETIC" in m.meta.source
        assert m.meta.segment_length == length and m.meta.sample_rate == rate
        assert len(m.subjects) == SMALL["subjects"]
    assert read_manifest(out / "af").label_counts["0"] == read_manifest(out / "af").label_counts["1"]


def _intervals(targets: np.ndarray) -> np.ndarray:
    return np.diff(np.flatnonzero(targets))


def test_beat_targets_sit_on_peaks(demo):
    modality, out = demo
    data = read_shards(out / "beats")
    hits = total = 0
    for tok, tgt in zip(data.tokens.astype(int), data.targets, strict=True):
        for b in np.flatnonzero(tgt):
            lo, hi = max(0, b - 2), min(len(tok), b + 3)
            hits += tok[b] >= tok[lo:hi].max() - 2  # the local maximum, to within rounding
            total += 1
    assert total > 0 and hits / total > 0.95
    rate = data.meta.sample_rate
    bpm = 60 * rate / np.median(_intervals(data.targets[0]))
    assert 40 < bpm < 140


def test_af_windows_are_irregular_and_sinus_regular(demo):
    """The label is visible in the tokens: RR irregularity from simple peak picking separates it."""
    _, out = demo
    data = read_shards(out / "af")
    rate = data.meta.sample_rate
    score = []
    for tok in data.tokens.astype(float):
        # Beats by their steepest upstroke (QRS / systolic rise), not by height: tall T waves
        # would pass a height threshold.
        slope = np.diff(tok)
        peaks, _ = find_peaks(slope, distance=int(0.3 * rate), height=0.5 * slope.max())
        rr = np.diff(peaks)
        score.append(np.std(rr) / np.mean(rr) if len(rr) > 2 else 0.0)
    score, label = np.asarray(score), data.label
    # AUROC of the irregularity score (Mann-Whitney)
    pos, neg = score[label == 1], score[label == 0]
    auroc = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert auroc > 0.9


def test_deterministic_from_the_seed(tmp_path):
    args = {**SMALL, "subjects": 2, "seconds": 25}
    build_demo(tmp_path / "a", "ppg", **args)
    build_demo(tmp_path / "b", "ppg", **args)
    build_demo(tmp_path / "c", "ppg", **{**args, "seed": 1})
    for name in ("pretrain", "af", "beats"):
        a, b, c = (read_manifest(tmp_path / d / name) for d in "abc")
        assert [s.sha256 for s in a.shards] == [s.sha256 for s in b.shards]
        assert [s.sha256 for s in a.shards] != [s.sha256 for s in c.shards]


@pytest.mark.slow
def test_cli_builds_every_demo_set_of_both_modalities(tmp_path):
    """``make data``: the classic sets and the targets demo (recordings prepared through
    labels_csv into hr / rhythm / hr_tag), for ECG and PPG; how long it takes is
    bench/bench_data.py's to measure, not a test's."""
    out = subprocess.run(
        [sys.executable, "-m", "heartgpt.prepare", "source=demo", f"paths.data_dir={tmp_path}",
         "demo.target_subjects=6", "demo.target_records=2"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    for modality in ("ecg", "ppg"):
        for name in ("pretrain", "af", "beats", "hr", "rhythm", "hr_tag"):
            manifest = validate_shard_dir(tmp_path / "demo" / modality / name, modality=modality)
            assert manifest.meta.synthetic, (modality, name)
        assert (tmp_path / "demo" / modality / "recordings" / "labels.csv").is_file()
    assert "SYNTHETIC" in out.stdout


def test_heart_rate_of_a_file_counts_only_the_intervals_it_holds():
    from heartgpt.data.demo_targets import beat_times, heart_rate

    beats = np.array([0.2, 1.0, 1.8, 2.4, 3.3])
    assert heart_rate(beats, 0.5, 2.5) == pytest.approx(60 / np.mean([0.8, 0.8, 0.6]))
    # from 1.0 s on, the interval ending at 1.0 s (its first beat unseen) does not count
    assert heart_rate(beats, 0.5, 2.5, seen_from=1.0) == pytest.approx(60 / np.mean([0.8, 0.6]))
    assert np.isnan(heart_rate(beats, 0.0, 0.5))  # the first beat has no interval
    rng = np.random.default_rng(0)
    rr = np.diff(beat_times(rng, 60.0, 70.0, "ectopic"))
    ratio = rr[1:] / rr[:-1]
    assert (ratio > 1.4).sum() >= 8  # premature beats, each followed by a compensatory pause
    assert np.diff(beat_times(np.random.default_rng(0), 60.0, 70.0, "sinus")).std() < 0.1
