"""How well a classifier's probabilities are calibrated: expected calibration error
(torchmetrics), Brier score and a reliability diagram, of the raw probabilities and of those
scaled by the checkpoint's temperature (issue 29).

Read from a predictions file's rows (``eval_predictions.csv``, ``test_predictions.csv``: a
``label`` and ``prob`` for binary heads, ``prob_<k>`` per class for multiclass ones), so
``eval``, a run's test and :mod:`heartgpt.cv` (pooling folds, each with its own temperature)
report the same numbers. Metric names: ``ece``, ``brier`` (raw) and ``ece_calibrated``,
``brier_calibrated`` (when there is a temperature), and ``temperature``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from heartgpt.files import atomic_path
from heartgpt.heads.calibration import logits_of, scaled_probabilities

RELIABILITY_PNG = {"eval": "eval_reliability.png", "test": "test_reliability.png",
                   "cv": "reliability.png"}


def probabilities_of(rows: Sequence[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor, str] | None:
    """``(probabilities, labels, kind)`` of per-window predictions rows (binary: (N,) positive
    class; multiclass: (N, K)); None for rows of another head (values, per-position tags)."""
    if not rows or "label" not in rows[0]:
        return None
    labels = torch.tensor([int(float(r["label"])) for r in rows])
    if "prob" in rows[0]:
        return torch.tensor([float(r["prob"]) for r in rows], dtype=torch.float64), labels, "binary"
    columns = sorted((k for k in rows[0] if k.startswith("prob_")), key=lambda k: int(k[5:]))
    if not columns:
        return None
    probs = torch.tensor([[float(r[c]) for c in columns] for r in rows], dtype=torch.float64)
    return probs, labels, "multiclass"


def rescaled(probs: torch.Tensor, kind: str, temperature: float | None) -> torch.Tensor:
    """``probs`` as the temperature scales their logits (unchanged for None)."""
    if temperature is None:
        return probs
    return scaled_probabilities(logits_of(probs, kind), float(temperature), kind).double()


def ece_and_brier(probs: torch.Tensor, labels: torch.Tensor, kind: str, bins: int
                  ) -> dict[str, float]:
    """Expected calibration error (L1, ``bins`` equal-width bins of the confidence) and Brier
    score (mean squared error of the probability vector against the one-hot label)."""
    from torchmetrics.functional.classification import (
        binary_calibration_error,
        multiclass_calibration_error,
    )

    if kind == "binary":
        ece = binary_calibration_error(probs.float(), labels, n_bins=bins, norm="l1")
        brier = ((probs - labels.double()) ** 2).mean()
    else:
        k = probs.shape[1]
        ece = multiclass_calibration_error(probs.float(), labels, num_classes=k, n_bins=bins,
                                           norm="l1")
        onehot = torch.nn.functional.one_hot(labels, k).double()
        brier = ((probs - onehot) ** 2).sum(dim=1).mean()
    return {"ece": float(ece), "brier": float(brier)}


def calibration_metrics(parts: Sequence[tuple[Sequence[dict[str, Any]], float | None]],
                        bins: int) -> dict[str, float] | None:
    """ECE and Brier of the rows of every ``(rows, temperature)`` part pooled, raw and (when
    every part has a temperature) each part scaled by its own; None: no probability rows."""
    read = [(probabilities_of(rows), t) for rows, t in parts]
    read = [(r, t) for r, t in read if r is not None]
    if not read:
        return None
    kind = read[0][0][2]
    raw = torch.cat([r[0] for r, _ in read])
    labels = torch.cat([r[1] for r, _ in read])
    out = ece_and_brier(raw, labels, kind, bins)
    temperatures = [t for _, t in read]
    if all(t is not None for t in temperatures):
        scaled = torch.cat([rescaled(r[0], kind, t) for r, t in read])
        out.update({f"{k}_calibrated": v for k, v in ece_and_brier(scaled, labels, kind,
                                                                   bins).items()})
        if len(set(temperatures)) == 1:
            out["temperature"] = float(temperatures[0])
    return out


def reliability_diagram(parts: Sequence[tuple[Sequence[dict[str, Any]], float | None]],
                        bins: int, path: str | Path, title: str) -> Path | None:
    """A reliability diagram (accuracy against confidence per bin, raw and, where there is a
    temperature, calibrated) as a PNG at ``path`` (atomic); None: no probability rows."""
    read = [(probabilities_of(rows), t) for rows, t in parts]
    read = [(r, t) for r, t in read if r is not None]
    if not read:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    kind = read[0][0][2]
    labels = torch.cat([r[1] for r, _ in read])
    curves = {"raw": torch.cat([r[0] for r, _ in read])}
    if all(t is not None for _, t in read):
        curves["calibrated"] = torch.cat([rescaled(r[0], kind, t) for r, t in read])
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect")
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    for name, probs in curves.items():
        conf, hit = _confidence(probs, labels, kind)
        which = torch.bucketize(conf, edges[1:-1])
        xs, ys = [], []
        for b in range(bins):
            sel = which == b
            if sel.any():
                xs.append(float(conf[sel].mean()))
                ys.append(float(hit[sel].mean()))
        ece = ece_and_brier(probs, labels, kind, bins)["ece"]
        ax.plot(xs, ys, marker="o", label=f"{name} (ECE {ece:.3f})")
    ax.set_xlabel("confidence" if kind == "multiclass" else "predicted probability")
    ax.set_ylabel("accuracy" if kind == "multiclass" else "observed frequency")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def _confidence(probs: torch.Tensor, labels: torch.Tensor, kind: str
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary: the probability and whether the label is positive; multiclass: the top
    probability and whether its class is the label."""
    if kind == "binary":
        return probs, labels.double()
    conf, predicted = probs.max(dim=1)
    return conf, (predicted == labels).double()


def checkpoint_temperature(path: str | Path | None) -> float | None:
    """The temperature the checkpoint ``path`` stores (None: none, or no checkpoint)."""
    if not path or not Path(path).is_file():
        return None
    from heartgpt.model.checkpoints import load_model

    calibration = load_model(path).calibration
    return None if calibration is None else calibration.temperature


def report_files(out: str | Path, predictions: str, stage: str, temperature: float | None,
                 bins: int, title: str) -> dict[str, float]:
    """The calibration metrics (:func:`calibration_metrics`) of ``<out>/<predictions>`` and its
    reliability diagram ``<out>/<stage>_reliability.png``; {} when the file holds no
    per-window probabilities."""
    path = Path(out) / predictions
    if not path.is_file():
        return {}
    from heartgpt.training.result_files import read_predictions

    parts = [(read_predictions(path), temperature)]
    metrics = calibration_metrics(parts, bins)
    if metrics is None:
        return {}
    reliability_diagram(parts, bins, Path(out) / RELIABILITY_PNG[stage], title)
    return metrics
