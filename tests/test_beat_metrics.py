"""Beat-level precision/recall/F1 against hand-worked examples."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from heartgpt.inference.beat_metrics import (
    BeatDetectionScores,
    beats_from_targets,
    match_beats,
    peak_beats,
)


def test_hand_worked_example():
    # annotated beats at 10, 50, 90, 130; detections at 12, 47, 60, 131, 170; tolerance 5:
    # 12~10, 47~50, 131~130 match; 60 (10 from 50) and 170 are false; 90 is missed.
    assert match_beats([12, 47, 60, 131, 170], [10, 50, 90, 130], tolerance=5) == (3, 2, 1)


def test_each_beat_matched_once_and_nearest_first():
    assert match_beats([12], [10, 14], tolerance=3) == (1, 0, 1)
    assert match_beats([12, 13], [12], tolerance=3) == (1, 1, 0)
    # 15 is 1 from 16 and 5 from 10; 13 is 3 from both: pairing nearest first keeps both.
    assert match_beats([13, 15], [10, 16], tolerance=3) == (2, 0, 0)
    assert match_beats([], [3, 4], tolerance=3) == (0, 0, 2)
    assert match_beats([3], [], tolerance=3) == (0, 1, 0)
    assert match_beats([5], [10], tolerance=5) == (1, 0, 0)  # tolerance is inclusive


def test_beats_from_targets_takes_run_centres():
    t = np.zeros(30)
    t[[4, 5, 6]] = 1  # a beat labelled with +-1 sample
    t[15] = 1
    t[[28, 29]] = 1
    np.testing.assert_array_equal(beats_from_targets(t), [5, 15, 28])


def bump_row(length: int, centres: list[int]) -> np.ndarray:
    x = np.arange(length)
    return sum(np.exp(-0.5 * ((x - c) / 1.5) ** 2) for c in centres) * 0.9


def test_metric_scores_match_the_hand_count():
    probs = torch.tensor(np.stack([bump_row(200, [12, 47, 60, 131, 170]), bump_row(200, [20, 100])]),
                         dtype=torch.float32)
    targets = torch.zeros(2, 200)
    targets[0, [10, 50, 90, 130]] = 1
    targets[1, [21, 99]] = 1
    metric = BeatDetectionScores(tolerance=5, height=0.3, distance=5)
    metric.update(probs[:1], targets[:1])  # batches accumulate
    metric.update(probs[1:], targets[1:])
    scores = metric.compute()
    tp, fp, fn = 3 + 2, 2, 1
    assert scores["precision"].item() == pytest.approx(tp / (tp + fp))
    assert scores["recall"].item() == pytest.approx(tp / (tp + fn))
    assert scores["f1"].item() == pytest.approx(2 * tp / (2 * tp + fp + fn))
    metric.reset()
    assert metric.compute()["f1"].item() == 0.0


def test_peak_width_limit_drops_wide_bumps_as_detect_beats_does():
    from heartgpt.inference.beat_detection import PEAK_DISTANCE, PEAK_HEIGHT, PEAK_WIDTH, find_beats

    t = np.arange(400, dtype=np.float64)
    narrow = 0.3 * np.exp(-0.5 * ((t - 100) / 2.0) ** 2)  # half-height width ~5 samples
    wide = 0.3 * np.exp(-0.5 * ((t - 300) / 20.0) ** 2)  # ~47 samples
    track = narrow + wide
    assert peak_beats(track, 0.1, 14).tolist() == [100, 300]
    assert peak_beats(track, 0.1, 14, max_width=20).tolist() == [100]
    assert find_beats(track)[0].tolist() == [100]  # the released settings drop it too

    rng = np.random.default_rng(0)
    noisy = np.clip(track + 0.02 * rng.standard_normal(t.size), 0, 1)
    np.testing.assert_array_equal(peak_beats(noisy, PEAK_HEIGHT, PEAK_DISTANCE, PEAK_WIDTH[1]),
                                  find_beats(noisy)[0])
