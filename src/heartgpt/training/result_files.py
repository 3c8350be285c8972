"""The test results a run leaves in its directory, and reading them back.

``test=true`` writes ``test_predictions.csv`` (a row per held-out window,
:class:`~heartgpt.training.finetune.FinetuneModule`), ``test_confusion_matrix.csv`` (multiclass
heads) and ``test_metrics.json`` (:func:`write_test_metrics`); :mod:`heartgpt.cv` pools them
over folds, :mod:`heartgpt.compare` tabulates them over runs; ``python -m heartgpt.eval`` writes
the same files as ``eval_*`` (:mod:`heartgpt.training.evaluation`). A metric the held-out labels leave
undefined (an AUROC over one class) is null there, with its reason (:func:`null_undefined`).
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

from heartgpt.files import write_json_atomic
from heartgpt.training.mean_baseline import BEATS_MEAN_BASELINE, verdict

log = logging.getLogger("heartgpt.train")  # what a run logs keeps its name in train.log
TEST_METRICS = "test_metrics.json"  # the tested checkpoint's metrics and facts of the run
TEST_PREDICTIONS = "test_predictions.csv"  # every tested window's prediction
TEST_CONFUSION = "test_confusion_matrix.csv"  # multiclass heads: rows true class, columns predicted
# python -m heartgpt.eval: the same files of the scored rows
EVAL_METRICS = "eval_metrics.json"
EVAL_PREDICTIONS = "eval_predictions.csv"
EVAL_BEATS = "eval_beats.csv"
EVAL_CONFUSION = "eval_confusion_matrix.csv"

# Test metrics that need both classes, or one of them, among a fold's held-out windows.
_NEEDS = {"auroc": (0, 1), "ap": (1,), "sensitivity": (1,), "f1": (1,), "specificity": (0,)}


def read_predictions(path: Path) -> list[dict]:
    """The rows of a predictions file (``test_predictions.csv``, ``eval_predictions.csv``)."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def read_test_metrics(output_dir: str | Path) -> dict[str, Any]:
    """``<run dir>/test_metrics.json`` ({} when the run was not tested)."""
    import json

    path = Path(output_dir) / TEST_METRICS
    return json.loads(path.read_text()) if path.is_file() else {}


def undefined_metrics(metrics: dict, rows: list[dict]) -> dict[str, str]:
    """``{metric: reason}`` for the fold's test metrics that its held-out labels leave
    undefined (an AUROC over one class, a sensitivity without positives): torchmetrics reports
    them as 0, which must neither be read as a score nor averaged."""
    if not rows or "label" not in rows[0]:
        return {}
    present = {int(float(r["label"])) for r in rows}
    classes = sum(k.startswith("prob_") for k in rows[0])  # K >= 2 classes: a prob_k per class
    undefined = {}
    for key in metrics:
        name = key.rsplit("/", 1)[-1]
        if classes:  # a macro AUROC needs every class
            needs: tuple[int, ...] = tuple(range(classes)) if name == "auroc" else ()
        else:
            needs = _NEEDS.get(name, ())
        missing = [c for c in needs if c not in present]
        if missing:  # rows are not empty: one class at most is missing
            what = ("positives" if missing == [1] else "negatives") if not classes else \
                f"class {', '.join(map(str, missing))} windows"
            undefined[key] = f"undefined: no {what} among the fold's {len(rows)} held-out windows"
    return undefined


def null_undefined(metrics: dict, rows: list[dict]) -> dict:
    """``metrics`` with those :func:`undefined_metrics` finds (and any already marked in its
    ``undefined``) set to None, their reasons under ``undefined`` (absent when there are none)."""
    metrics = dict(metrics)
    undefined = {**metrics.pop("undefined", {}), **undefined_metrics(metrics, rows)}
    metrics = {k: (None if k in undefined else v) for k, v in metrics.items()}
    return {**metrics, "undefined": undefined} if undefined else metrics


def write_test_metrics(output_dir: str, results: list[dict[str, float]], ckpt: str | None,
                       extra: dict[str, Any] | None = None) -> None:
    """``<run dir>/test_metrics.json``: the test metrics of the tested checkpoint (for
    :mod:`heartgpt.cv` and for comparing sweep runs without a logger), and ``extra`` facts of
    the run (the parameters it trained). A regression's also says whether it beats predicting
    the training mean (:mod:`heartgpt.training.mean_baseline`), with a warning when not."""
    if not results:
        return
    metrics: dict[str, Any] = dict(results[0])
    predictions = Path(output_dir) / TEST_PREDICTIONS
    if predictions.is_file():  # e.g. the AUROC of a test set of one class: null, with why
        metrics = null_undefined(metrics, read_predictions(predictions))
        if "undefined" in metrics:
            log.warning("test metrics undefined on this test set: %s", metrics["undefined"])
    beats, warning = verdict(metrics, "test/")
    if beats is not None:
        metrics[BEATS_MEAN_BASELINE] = beats
    if warning:
        log.warning("test: %s", warning)
    write_json_atomic(Path(output_dir) / TEST_METRICS,
                      {**metrics, **(extra or {}), "checkpoint": ckpt or ""})
