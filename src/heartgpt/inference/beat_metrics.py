"""Beat-level detection scores: a detected peak counts when it lies within a tolerance of an
annotated beat, each annotated beat matched at most once.

``match_beats`` is the functional form; :class:`BeatDetectionScores` is the torchmetrics
``Metric`` that accumulates true/false positives and misses over batches (summed across
processes) and reports precision, recall and F1.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy.signal import find_peaks
from torchmetrics import Metric


def match_beats(detected: np.ndarray, annotated: np.ndarray, tolerance: int) -> tuple[int, int, int]:
    """Count (true positives, false positives, false negatives) of ``detected`` beat indices.

    Pairs are made greedily by increasing distance, so each annotated beat takes the nearest
    free detection within ``tolerance`` samples (inclusive) and each detection is used once.
    """
    detected = np.unique(np.asarray(detected, dtype=np.int64))
    annotated = np.unique(np.asarray(annotated, dtype=np.int64))
    tp = len(pair_beats(detected, annotated, tolerance))
    return tp, int(detected.size) - tp, int(annotated.size) - tp


def pair_beats(detected: np.ndarray, annotated: np.ndarray, tolerance: int) -> dict[int, int]:
    """``{detected index: annotated index}`` of the pairs :func:`match_beats` counts."""
    detected = np.unique(np.asarray(detected, dtype=np.int64))
    annotated = np.unique(np.asarray(annotated, dtype=np.int64))
    if detected.size == 0 or annotated.size == 0:
        return {}
    dist = np.abs(detected[:, None] - annotated[None, :])  # (n_detected, n_annotated)
    det_idx, ann_idx = np.nonzero(dist <= tolerance)
    order = np.argsort(dist[det_idx, ann_idx], kind="stable")
    pairs: dict[int, int] = {}
    used_det, used_ann = set(), set()
    for d, a in zip(det_idx[order], ann_idx[order], strict=True):
        if d not in used_det and a not in used_ann:
            used_det.add(d)
            used_ann.add(a)
            pairs[int(detected[d])] = int(annotated[a])
    return pairs


def beat_rows(probs: np.ndarray, targets: np.ndarray, peak_finder: Callable[[np.ndarray], np.ndarray],
              tolerance: int) -> list[dict]:
    """One row per detected and per annotated beat of a window: ``position``, ``kind``
    (detected | annotated), ``prob`` there and ``matched`` (the position of its partner within
    ``tolerance``, or -1), as :class:`BeatDetectionScores` counts them."""
    detected = np.unique(np.asarray(peak_finder(probs), dtype=np.int64))
    annotated = beats_from_targets(targets)
    pairs = pair_beats(detected, annotated, tolerance)
    partner = {a: d for d, a in pairs.items()}
    rows = [{"position": int(d), "kind": "detected", "prob": float(probs[d]),
             "matched": pairs.get(int(d), -1)} for d in detected]
    rows += [{"position": int(a), "kind": "annotated", "prob": float(probs[a]),
              "matched": partner.get(int(a), -1)} for a in annotated]
    return sorted(rows, key=lambda r: (r["position"], r["kind"]))


def beats_from_targets(targets: np.ndarray) -> np.ndarray:
    """Annotated beat indices of a 0/1 target row: the centre of each run of ones.

    Labels may mark a beat with a few samples around it; each run is one beat.
    """
    t = np.asarray(targets) > 0.5
    edges = np.diff(np.concatenate([[False], t, [False]]).astype(np.int8))
    starts, ends = np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0]  # run is [start, end)
    return (starts + ends - 1) // 2


def peak_beats(probs: np.ndarray, height: float, distance: int,
               max_width: int | None = None) -> np.ndarray:
    """Detected beats in a per-sample beat probability: ``scipy.signal.find_peaks`` peaks at
    least ``height`` high, ``distance`` samples apart and, when given, at most ``max_width``
    samples wide (at half prominence)."""
    width = None if max_width is None else (None, max_width)
    peaks, _ = find_peaks(np.asarray(probs, dtype=np.float64), height=height, distance=distance,
                          width=width)
    return peaks


class BeatDetectionScores(Metric):
    """Beat-level precision, recall and F1 of per-position beat probabilities.

    ``update(probs, targets)`` takes (B, T) probabilities and (B, T) 0/1 targets; peaks are
    found per row with ``peak_finder`` (default: :func:`peak_beats`).
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, tolerance: int, height: float, distance: int, max_width: int | None = None,
                 peak_finder: Callable[[np.ndarray], np.ndarray] | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        if tolerance < 0:
            raise ValueError(f"tolerance must be >= 0 samples, got {tolerance}")
        self.tolerance = tolerance
        self.peak_finder = peak_finder or (lambda p: peak_beats(p, height, distance, max_width))
        for name in ("tp", "fp", "fn"):
            self.add_state(name, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, probs: torch.Tensor, targets: torch.Tensor) -> None:
        probs_np = probs.detach().float().cpu().numpy()
        targets_np = targets.detach().float().cpu().numpy()
        tp = fp = fn = 0
        for p, t in zip(probs_np, targets_np, strict=True):
            a, b, c = match_beats(self.peak_finder(p), beats_from_targets(t), self.tolerance)
            tp, fp, fn = tp + a, fp + b, fn + c
        self.tp += tp
        self.fp += fp
        self.fn += fn

    def compute(self) -> dict[str, torch.Tensor]:
        tp, fp, fn = self.tp.float(), self.fp.float(), self.fn.float()
        precision = tp / (tp + fp) if tp + fp > 0 else torch.tensor(0.0)
        recall = tp / (tp + fn) if tp + fn > 0 else torch.tensor(0.0)
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn > 0 else torch.tensor(0.0)
        return {"precision": precision, "recall": recall, "f1": f1}
