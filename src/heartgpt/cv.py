"""``python -m heartgpt.cv``: subject-wise cross-validation of a fine-tuning run.

Runs every fold of ``data.folds`` (K, or ``loso`` for leave-one-subject-out, the paper's AF
protocol) one after another with the same config, each fold fitting and then testing its best
checkpoint, and writes into the CV directory:

- ``fold_<k>/``: the fold's run (checkpoints, logs, ``test_predictions.csv``);
- ``summary.json`` and ``folds.csv``: per-fold test metrics, and the pooled metrics over all
  held-out predictions (pooled AUROC / AP for sequence tasks, as the paper reports; MAE / RMSE
  for regressions, beside those of always predicting each fold's training mean, and
  ``beats_mean_baseline``).

Usage (Hydra overrides as for ``heartgpt.train``)::

    python -m heartgpt.cv experiment=demo_af data.folds=5
    python -m heartgpt.cv experiment=paper_ppg_af data.folds=loso
    python -m heartgpt.cv --summarize outputs/af/cv/<date_time>   # re-pool finished folds

Folds run sequentially in this process; to spread them over a cluster, launch
``python -m heartgpt.train -m ... data.fold=0,1,...`` with a Hydra launcher and then
``--summarize`` the sweep directory.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from torchmetrics.functional.classification import (
    binary_accuracy,
    binary_auroc,
    binary_average_precision,
)

from heartgpt.errors import one_line_errors
from heartgpt.training.config_checks import check_values
from heartgpt.training.mean_baseline import BEATS_MEAN_BASELINE, pool_folds, verdict
from heartgpt.training.renamed_keys import TRAIN_RENAMES, check_config
from heartgpt.training.result_files import (
    TEST_METRICS,
    TEST_PREDICTIONS,
    null_undefined,
    read_predictions,
)

log = logging.getLogger(__name__)


def fold_count(cfg) -> int:
    """Number of folds the data config defines (K, or the number of subjects for ``loso``)."""
    from hydra.utils import instantiate

    folds = cfg.data.get("folds")
    if folds is None:
        raise ValueError("cross-validation needs data.folds=K or data.folds=loso")
    if str(folds) != "loso":
        return int(folds)
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.prepare_data()
    return datamodule.manifest.row_index.num_subjects


def find_folds(cv_dir: Path) -> list[tuple[int, Path]]:
    """``(fold, run dir)`` under ``cv_dir``, by fold: the ``fold_<k>/`` of :func:`run_cv`, or
    the job directories of a multirun sweep over ``data.fold`` (the fold read from each job's
    ``.hydra/config.yaml``)."""
    from omegaconf import OmegaConf

    folds = [(int(d.name.split("_")[1]), d) for d in cv_dir.glob("fold_*") if d.is_dir()]
    if not folds:
        for config in cv_dir.glob("*/.hydra/config.yaml"):
            fold = OmegaConf.select(OmegaConf.load(config), "data.fold")
            if fold is None:
                raise ValueError(f"{config}: a run without data.fold is not a cross-validation fold")
            folds.append((int(fold), config.parent.parent))
    if not folds:
        raise FileNotFoundError(f"{cv_dir}: no fold_* directories (heartgpt.cv) or multirun jobs "
                                "(heartgpt.train -m ... data.fold=0,1,...) to summarise")
    seen = [k for k, _ in folds]
    if len(set(seen)) != len(seen):
        raise ValueError(f"{cv_dir}: fold numbers repeat ({sorted(seen)}): several sweeps in one folder?")
    return sorted(folds)


def summarize(cv_dir: str | Path) -> dict:
    """Pool the folds under ``cv_dir`` (see :func:`find_folds`) into ``summary.json`` and
    ``folds.csv``."""
    cv_dir = Path(cv_dir)
    fold_dirs = find_folds(cv_dir)
    per_fold, pooled_rows, fold_results = [], [], []
    for fold, d in fold_dirs:
        metrics_file = d / TEST_METRICS
        metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
        preds = d / TEST_PREDICTIONS
        rows = read_predictions(preds) if preds.is_file() else []
        subjects = sorted({r["subject"] for r in rows})
        beats, _ = verdict(metrics, "test/")
        if beats is not None:
            metrics[BEATS_MEAN_BASELINE] = beats
        per_fold.append({"fold": fold, "windows": len(rows), "test_subjects": subjects,
                         **null_undefined(metrics, rows)})
        pooled_rows += rows
        fold_results.append((metrics, rows))
    summary: dict = {"folds": per_fold, "n_folds": len(per_fold)}
    if pooled_rows and "prob" in pooled_rows[0]:
        probs = torch.tensor([float(r["prob"]) for r in pooled_rows])
        labels = torch.tensor([int(r["label"]) for r in pooled_rows])
        pooled = {"windows": len(pooled_rows), "positives": int(labels.sum())}
        if 0 < int(labels.sum()) < len(labels):
            pooled["auroc"] = float(binary_auroc(probs, labels))
            pooled["ap"] = float(binary_average_precision(probs, labels))
        pooled["acc"] = float(binary_accuracy(probs, labels))
        summary["pooled"] = pooled
    _pool_calibration(summary, fold_results, cv_dir)
    regression = pool_folds(fold_results) if pooled_rows else None
    if regression is not None:  # MAE / RMSE over every held-out value, and their baselines
        summary["pooled"] = {"windows": len(pooled_rows), **regression}
        _, warning = verdict(regression)
        if warning:
            log.warning("pooled over the folds: %s", warning)
    numeric = {k for f in per_fold for k, v in f.items() if isinstance(v, int | float)
               and not isinstance(v, bool) and k not in ("fold", "windows", "test/windows", "calibration_bins")}
    # mean over the folds where a metric is defined; `defined_folds` says over how many
    summary["mean"] = {k: float(np.mean([f[k] for f in per_fold if f.get(k) is not None]))
                       for k in sorted(numeric)}
    summary["defined_folds"] = {k: sum(f.get(k) is not None for f in per_fold) for k in sorted(numeric)}
    (cv_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    with open(cv_dir / "folds.csv", "w", newline="") as f:
        flag = [BEATS_MEAN_BASELINE] if any(BEATS_MEAN_BASELINE in f for f in per_fold) else []
        keys = ["fold", "windows", *sorted(numeric), *flag]
        writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(per_fold)
    return summary


def _pool_calibration(summary: dict, fold_results: list, cv_dir: Path) -> None:
    """ECE and Brier over every held-out window (raw, and each fold's scaled by its own best
    checkpoint's temperature) into ``summary["pooled"]``, and ``reliability.png``."""
    from heartgpt.training.calibration_report import (
        RELIABILITY_PNG,
        calibration_metrics,
        reliability_diagram,
    )

    bins = next((int(m["calibration_bins"]) for m, _ in fold_results
                 if m.get("calibration_bins")), None)
    parts = [(rows, m.get("temperature")) for m, rows in fold_results if rows]
    pooled = calibration_metrics(parts, bins) if bins and parts else None
    if pooled is None:
        return
    pooled.pop("temperature", None)
    summary.setdefault("pooled", {}).update(pooled)
    reliability_diagram(parts, bins, cv_dir / RELIABILITY_PNG["cv"],
                        f"cross-validation: {len(parts)} folds pooled")


def run_cv(cfg, cv_dir: str | Path) -> dict:
    """Fit and test every fold of ``cfg`` under ``cv_dir``; return the summary."""
    from omegaconf import open_dict

    from heartgpt.training.run import train

    cv_dir = Path(cv_dir)
    n = fold_count(cfg)
    log.info("cross-validation: %d folds in %s", n, cv_dir)
    for k in range(n):
        fold_cfg = cfg.copy()
        with open_dict(fold_cfg):
            fold_cfg.data.fold = k
            fold_cfg.test = True
            fold_cfg.trainer.limit_test_batches = 1.0  # pooling needs every held-out window
            fold_cfg.paths.output_dir = str(cv_dir / f"fold_{k}")
            if fold_cfg.get("logger") and fold_cfg.logger.get("wandb"):
                fold_cfg.logger.wandb.group = cv_dir.name
                fold_cfg.logger.wandb.name = f"{cv_dir.name}-fold{k}"
        train(fold_cfg)
    return summarize(cv_dir)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--summarize", metavar="DIR", help="only pool the folds already in DIR")
    parser.add_argument("--dir", help="CV directory (default <log_dir>/<run_name>/cv/<time>)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for heartgpt.train")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    with one_line_errors():
        summary = _run(args)
    json.dump({k: summary[k] for k in ("n_folds", "pooled", "mean") if k in summary},
              sys.stdout, indent=2)
    print()


def _run(args: argparse.Namespace) -> dict:
    if args.summarize:
        summary = summarize(args.summarize)
    else:
        from heartgpt.training.run import compose_config

        cfg = compose_config(args.overrides)
        check_config(cfg, TRAIN_RENAMES)
        check_values(cfg)
        stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
        cv_dir = Path(args.dir or Path(cfg.paths.log_dir) / cfg.run_name / "cv" / stamp)
        summary = run_cv(cfg, cv_dir)
        print(f"cross-validation summary: {cv_dir / 'summary.json'}")
    return summary


if __name__ == "__main__":
    main()
