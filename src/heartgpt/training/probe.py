"""Linear probes of frozen embeddings: the work of ``python -m heartgpt.probe``.

A probe asks how much of a target a checkpoint's features already hold, without fine-tuning:
the vectors ``python -m heartgpt.predict mode=embed`` wrote (``embeddings.h5``: a row per usable
window, ``recording_index`` into ``recordings``) are joined by recording name to a labels CSV
(``record, subject, <target>``), and a linear model on standardised features is cross-validated
with folds that never split a subject:

* values (``kind=regress``): :class:`~sklearn.linear_model.Ridge` in
  :class:`~sklearn.model_selection.GroupKFold` folds; each fold's MAE, RMSE and R2, and the
  mean baseline's MAE and RMSE (the training folds' mean predicted for every test example);
* classes (``kind=classify``): :class:`~sklearn.linear_model.LogisticRegression` in
  :class:`~sklearn.model_selection.StratifiedGroupKFold` folds; accuracy, balanced accuracy and
  AUROC (binary; more classes: the macro mean of one-vs-rest AUROCs), and the majority class's
  accuracy and balanced accuracy.

``unit=recording`` (the default) is one example per recording, the mean of its window vectors:
a label belongs to a recording, so every recording weighs the same however long it is and the
number of examples is the number of labels. ``unit=window`` keeps every window with its
recording's label (more examples, but those of one recording are not independent; the folds
still keep each subject whole). The folds depend only on the labelled recordings (sorted by
name) and the seed, never on the embeddings: probes of several checkpoints over the same
recordings are scored on the same folds, fold for fold.
"""

from __future__ import annotations

import csv
import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from heartgpt.errors import ConfigError, InputError
from heartgpt.files import atomic_path, write_json_atomic
from heartgpt.inference.prediction_store import Embeddings, read_embeddings
from heartgpt.training.config_checks import Check, integer, number, one_of

log = logging.getLogger(__name__)
METRICS_FILE = "probe_metrics.json"
PREDICTIONS_FILE = "probe_predictions.csv"
KINDS = ("auto", "regress", "classify")
UNITS = ("recording", "window")
PROBE_CHECKS: dict[str, Check] = {
    "kind": one_of(*KINDS), "unit": one_of(*UNITS), "folds": integer(2), "seed": integer(0),
    "alpha": number(0, open_lo=True), "C": number(0, open_lo=True), "max_iter": integer(1)}
REGRESS_METRICS = ("mae", "rmse", "r2", "baseline_mae", "baseline_rmse", "baseline_r2")
CLASSIFY_METRICS = ("accuracy", "balanced_accuracy", "auroc", "baseline_accuracy",
                    "baseline_balanced_accuracy")


@dataclass
class Examples:
    """The probe's data: features, targets and subjects, one row per example."""

    x: np.ndarray  # (n, C) float64
    y: list[str]  # the target cells as written in the labels CSV
    subject: list[str]
    record: list[str]
    window_start: list[int | None]  # unit=window: the window's start sample
    unlabelled: list[str]  # recordings with embeddings but no label (or an empty cell)
    without_embedding: int  # labelled records the predict run has no vector of


def read_labels(path: str | Path, record_column: str, subject_column: str | None, target: str
                ) -> dict[str, tuple[str, str]]:
    """``{record: (subject, target cell)}`` of a labels CSV (a blank cell: no label).

    Raises:
        InputError: a column is missing, or a record appears twice.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such labels file")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = list(reader.fieldnames or [])
        for key, column in (("record_column", record_column), ("subject_column", subject_column),
                            ("target", target)):
            if column is not None and column not in columns:
                raise InputError(path, f"has no column {column!r} ({key}); its columns: "
                                       f"{', '.join(columns) or 'none'}")
        out: dict[str, tuple[str, str]] = {}
        for row in reader:
            record = (row[record_column] or "").strip()
            if record in out:
                raise InputError(path, f"record {record!r} appears twice")
            subject = (row[subject_column] or "").strip() if subject_column else record
            out[record] = (subject or record, (row[target] or "").strip())
    return out


def join(emb: Embeddings, labels: Mapping[str, tuple[str, str]], unit: str) -> Examples:
    """The labelled examples of ``emb``: a recording's name matches a ``record`` as it is or by
    its last path part (``predict`` names files below the inputs' folder by their relative path).
    """
    by_recording: dict[str, list[int]] = {}
    for row, name in enumerate(emb.recording):
        by_recording.setdefault(name, []).append(row)
    x, y, subject, record, starts, unlabelled, matched = [], [], [], [], [], [], set()
    for name in sorted(by_recording):  # the folds depend on the records, not the file order
        key = name if name in labels else name.replace("\\", "/").rsplit("/", 1)[-1]
        if key not in labels or labels[key][1] == "":
            unlabelled.append(name)
            continue
        matched.add(key)
        rows = by_recording[name]
        groups = [rows] if unit == "recording" else [[r] for r in rows]
        for g in groups:
            x.append(emb.vectors[g].astype(np.float64).mean(axis=0))
            y.append(labels[key][1])
            subject.append(labels[key][0])
            record.append(name)
            starts.append(int(emb.start_sample[g[0]]) if unit == "window" else None)
    without = sum(1 for k, (_, v) in labels.items() if v != "" and k not in matched)
    dim = emb.vectors.shape[1] if emb.vectors.ndim == 2 else 0
    return Examples(np.asarray(x).reshape(len(x), dim), y, subject, record, starts, unlabelled,
                    without)


def kind_of(values: Sequence[str], kind: str) -> str:
    """``regress`` or ``classify``: ``auto`` is ``regress`` when every value is a number."""
    if kind != "auto":
        return kind
    try:
        [float(v) for v in values]
    except ValueError:
        return "classify"
    return "regress"


def _folds(y: np.ndarray, groups: np.ndarray, kind: str, folds: int, seed: int) -> np.ndarray:
    """The test fold of every example (subject-grouped)."""
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    splitter = (StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
                if kind == "classify" else GroupKFold(n_splits=folds))
    fold = np.full(len(y), -1, dtype=np.int64)
    for k, (_, test) in enumerate(splitter.split(np.zeros((len(y), 1)), y, groups)):
        fold[test] = k
    return fold


def _regress_fold(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray,
                  alpha: float) -> tuple[dict[str, float], np.ndarray]:
    from sklearn.linear_model import Ridge
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pred = make_pipeline(StandardScaler(), Ridge(alpha=alpha)).fit(x_tr, y_tr).predict(x_te)
    base = np.full(len(y_te), float(np.mean(y_tr)))

    def r2(p: np.ndarray) -> float:
        return float(r2_score(y_te, p)) if len(y_te) > 1 else math.nan

    return {"mae": float(mean_absolute_error(y_te, pred)),
            "rmse": float(np.sqrt(mean_squared_error(y_te, pred))), "r2": r2(pred),
            "baseline_mae": float(mean_absolute_error(y_te, base)),
            "baseline_rmse": float(np.sqrt(mean_squared_error(y_te, base))),
            "baseline_r2": r2(base)}, pred


def _auroc(y: np.ndarray, prob: np.ndarray) -> float:
    """Binary AUROC, or the macro mean of one-vs-rest AUROCs over the classes that are present
    and absent in ``y`` (NaN when none is)."""
    from sklearn.metrics import roc_auc_score

    if prob.shape[1] == 2:
        return float(roc_auc_score(y == 1, prob[:, 1])) if len(set(y.tolist())) == 2 else math.nan
    scores = [roc_auc_score(y == k, prob[:, k]) for k in range(prob.shape[1])
              if 0 < int(np.sum(y == k)) < len(y)]
    return float(np.mean(scores)) if scores else math.nan


def _classify_fold(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray,
                   n_classes: int, c: float, max_iter: int) -> tuple[dict[str, float], np.ndarray]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, balanced_accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    prob = np.zeros((len(y_te), n_classes))
    seen = np.unique(y_tr)
    if len(seen) == 1:  # a training fold of one class: it is the prediction
        prob[:, seen[0]] = 1.0
    else:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter))
        prob[:, seen] = model.fit(x_tr, y_tr).predict_proba(x_te)
    pred = prob.argmax(axis=1)
    majority = np.full(len(y_te), np.bincount(y_tr, minlength=n_classes).argmax())
    return {"accuracy": float(accuracy_score(y_te, pred)),
            "balanced_accuracy": float(balanced_accuracy_score(y_te, pred)),
            "auroc": _auroc(y_te, prob),
            "baseline_accuracy": float(accuracy_score(y_te, majority)),
            "baseline_balanced_accuracy": float(balanced_accuracy_score(y_te, majority))}, prob


def cross_validate(x: np.ndarray, y: Sequence[str], groups: Sequence[str], kind: str, *,
                   folds: int, seed: int, alpha: float, c: float, max_iter: int
                   ) -> dict[str, Any]:
    """Fit and score the probe in ``folds`` subject-grouped folds, features standardised on
    each fold's training part. Returns ``{"classes", "fold", "prediction", "per_fold", "mean",
    "std"}``: each example's test fold and out-of-fold prediction (classes: probabilities),
    each fold's metrics, their mean and standard deviation (ddof 1) over folds.

    Raises:
        ConfigError: fewer subjects than ``folds``.
    """
    subjects = np.asarray(groups)
    n_subjects = len(set(groups))
    if n_subjects < folds:
        raise ConfigError("folds", f"{folds} subject-grouped folds need at least {folds} subjects "
                                   f"with labelled embeddings, there are {n_subjects}")
    classes: list[str] = []
    if kind == "classify":
        classes = sorted(set(y), key=lambda v: (_number(v) is None, _number(v) or 0.0, v))
        target = np.asarray([classes.index(v) for v in y], dtype=np.int64)
        prediction = np.zeros((len(y), len(classes)))
    else:
        target = np.asarray([float(v) for v in y], dtype=np.float64)
        prediction = np.zeros(len(y))
    fold = _folds(target, subjects, kind, folds, seed)
    per_fold = []
    for k in range(folds):
        test = fold == k
        train = ~test
        if kind == "classify":
            scores, out = _classify_fold(x[train], target[train], x[test], target[test],
                                         len(classes), c, max_iter)
        else:
            scores, out = _regress_fold(x[train], target[train], x[test], target[test], alpha)
        prediction[test] = out
        per_fold.append({"fold": k, "n_test": int(test.sum()),
                         "n_test_subjects": len(set(subjects[test])), **scores})
    names = CLASSIFY_METRICS if kind == "classify" else REGRESS_METRICS
    table = np.asarray([[f[m] for m in names] for f in per_fold], dtype=np.float64)
    with warnings.catch_warnings():  # a metric NaN in every fold (AUROC of 1-class folds)
        warnings.simplefilter("ignore", RuntimeWarning)
        mean, std = np.nanmean(table, axis=0), np.nanstd(table, axis=0, ddof=1)
    return {"classes": classes, "fold": fold, "prediction": prediction, "per_fold": per_fold,
            "mean": dict(zip(names, mean.tolist(), strict=True)),
            "std": dict(zip(names, std.tolist(), strict=True))}


def _number(v: str) -> float | None:
    try:
        return float(v)
    except ValueError:
        return None


def probe(cfg: DictConfig) -> dict[str, Any]:
    """Probe ``cfg.target`` of ``cfg.labels`` on the embeddings in ``cfg.predictions``; writes
    :data:`METRICS_FILE` and :data:`PREDICTIONS_FILE` into ``cfg.out_dir`` (atomically), prints
    the table and returns the metrics.

    Raises:
        InputError: no embeddings, a missing column, no labelled recording, a value that is not
            a number for ``kind=regress``.
        ConfigError: fewer subjects than folds.
    """
    emb = read_embeddings(cfg.predictions)
    target, unit = str(cfg.target), str(cfg.unit)
    subject_column = None if cfg.subject_column is None else str(cfg.subject_column)
    labels = read_labels(cfg.labels, str(cfg.record_column), subject_column, target)
    ex = join(emb, labels, unit)
    if ex.unlabelled:
        log.warning("%d of %d recordings have no %s in %s (left out), e.g. %s",
                    len(ex.unlabelled), len(set(emb.recording)), target, cfg.labels,
                    ", ".join(ex.unlabelled[:3]))
    if not ex.y:
        raise InputError(cfg.labels, f"no recording of {cfg.predictions} has a {target} here "
                                     f"(matched by {cfg.record_column!s} = the recording's name)")
    kind = kind_of(ex.y, str(cfg.kind))
    if kind == "regress":
        bad = next((v for v in ex.y if _number(v) is None or not math.isfinite(float(v))), None)
        if bad is not None:
            raise InputError(cfg.labels, f"column {target}: {bad!r} is not a number (kind=regress;"
                                         " kind=classify for classes)")
    result = cross_validate(ex.x, ex.y, ex.subject, kind, folds=int(cfg.folds),
                            seed=int(cfg.seed), alpha=float(cfg.alpha), c=float(cfg.C),
                            max_iter=int(cfg.max_iter))
    model = (f"Ridge(alpha={float(cfg.alpha):g})" if kind == "regress"
             else f"LogisticRegression(C={float(cfg.C):g})")
    metrics = {
        "target": target, "kind": kind, "unit": unit, "probe": model, "folds": int(cfg.folds),
        "seed": int(cfg.seed), "embeddings": str(Path(cfg.predictions).resolve()),
        "checkpoint": emb.run.get("checkpoint"),
        "checkpoint_sha256": emb.run.get("checkpoint_sha256"),
        "pool": emb.run.get("mode", {}).get("pool"), "embedding_dim": int(ex.x.shape[1]),
        "labels": str(Path(cfg.labels).resolve()), "n_examples": len(ex.y),
        "n_recordings": len(set(ex.record)), "n_subjects": len(set(ex.subject)),
        "recordings_without_label": len(ex.unlabelled),
        "labelled_records_without_embedding": ex.without_embedding,
        "classes": result["classes"] or None, "per_fold": result["per_fold"],
        "mean": result["mean"], "std": result["std"],
    }
    metrics["beats_baseline"] = bool(
        metrics["mean"]["mae"] < metrics["mean"]["baseline_mae"] if kind == "regress"
        else metrics["mean"]["balanced_accuracy"] > metrics["mean"]["baseline_balanced_accuracy"])
    out_dir = Path(cfg.out_dir)
    _write_predictions(out_dir / PREDICTIONS_FILE, ex, result, unit)
    write_json_atomic(out_dir / METRICS_FILE, _nan_to_none(metrics))  # strict JSON: null
    print(probe_table(metrics))
    print(f"  -> {out_dir / METRICS_FILE}, {out_dir / PREDICTIONS_FILE}")
    return metrics


def _nan_to_none(value: Any) -> Any:
    """``value`` with every NaN float (a metric undefined in a fold) as None."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value


def _write_predictions(path: Path, ex: Examples, result: dict[str, Any], unit: str) -> None:
    """One row per example: its record, subject, (window start,) test fold, target and
    out-of-fold prediction (classes: the predicted class and each class's probability)."""
    classes = result["classes"]
    head = ["record", "subject", *(["start_sample"] if unit == "window" else []), "fold",
            "target", "prediction", *(f"p_{c}" for c in classes)]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(head)
        for i in range(len(ex.y)):
            pred = result["prediction"][i]
            cells = ([classes[int(np.argmax(pred))], *(f"{p:.6g}" for p in pred)] if classes
                     else [f"{float(pred):.6g}"])
            w.writerow([ex.record[i], ex.subject[i],
                        *([ex.window_start[i]] if unit == "window" else []),
                        int(result["fold"][i]), ex.y[i], *cells])


def probe_table(metrics: Mapping[str, Any]) -> str:
    """What the probe found: its data, each metric as mean +- std over folds beside the
    baseline's, then one line per fold."""
    regress = metrics["kind"] == "regress"
    names = ("mae", "rmse", "r2") if regress else ("accuracy", "balanced_accuracy", "auroc")
    shown = dict(mae="MAE", rmse="RMSE", r2="R2", accuracy="accuracy",
                 balanced_accuracy="balanced accuracy", auroc="AUROC")
    baseline = "mean baseline" if regress else "majority baseline"
    mean, std = metrics["mean"], metrics["std"]

    def cell(key: str) -> str:
        return "" if key not in mean else f"{mean[key]:.3f} ± {std[key]:.3f}"

    lines = [
        f"probe {metrics['target']} ({metrics['kind']}, {metrics['probe']} on standardised "
        f"{metrics['embedding_dim']}-dim {metrics['unit']} embeddings): {metrics['n_examples']} "
        f"examples, {metrics['n_recordings']} recordings, {metrics['n_subjects']} subjects, "
        f"{metrics['folds']} subject-grouped folds",
        f"  checkpoint {Path(str(metrics['checkpoint'])).name}; "
        f"{metrics['recordings_without_label']} recordings without a label, "
        f"{metrics['labelled_records_without_embedding']} labelled records without an embedding",
        f"  {'metric':<18} {'probe (mean ± std)':<22} {baseline}",
    ]
    for name in names:
        lines.append(f"  {shown[name]:<18} {cell(name):<22} {cell('baseline_' + name)}")
    short = dict(mae="MAE", rmse="RMSE", r2="R2", accuracy="acc", balanced_accuracy="bal_acc",
                 auroc="AUROC")
    lines.append("  fold  n_test  " + "  ".join(f"{short[n]:>8}" for n in names)
                 + "  " + "  ".join(f"{'base ' + short[n]:>12}" for n in names[:2]))
    for f in metrics["per_fold"]:
        lines.append(f"  {f['fold']:>4}  {f['n_test']:>6}  "
                     + "  ".join(f"{f[n]:>8.3f}" for n in names) + "  "
                     + "  ".join(f"{f['baseline_' + n]:>12.3f}" for n in names[:2]))
    verdict = "beats" if metrics["beats_baseline"] else "does NOT beat"
    lines.append(f"  the probe {verdict} the {baseline} "
                 f"({'MAE' if regress else 'balanced accuracy'})")
    return "\n".join(lines)
