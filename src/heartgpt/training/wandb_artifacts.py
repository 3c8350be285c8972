"""What a run gives W&B beyond its metrics: checkpoints as model artifacts, result tables.

* ``logger.wandb.log_model=true``: the best and the last checkpoint of a fit as versions of the
  artifact ``model-<run id>`` (type ``model``), aliased ``best`` / ``last``, their metadata the
  checkpoint's sha256, global step, the monitored metric and its value, the tested checkpoint's
  test metrics, and the run's ``optimized_metric`` (off by default: a checkpoint is copied into
  W&B's cache and, once synced, uploaded);
* ``logger.wandb.log_tables=true`` (default): ``test_predictions.csv`` / ``eval_predictions.csv``
  as the tables ``<stage>/predictions`` and the confusion matrix (``<stage>_confusion_matrix.csv``)
  as the table ``<stage>/confusion_matrix_counts`` and W&B's confusion-matrix plot
  ``<stage>/confusion_matrix``;
* :func:`log_folder` (any folder, e.g. an exported hub folder) as an artifact, and
  :func:`log_folder_to_run`: into the W&B run of a run directory (``wandb_run_id``), e.g. the
  hub folder ``python -m heartgpt.export format=hub`` made of one of its checkpoints.

Offline runs hold all of it in ``<run dir>/wandb/offline-run-*`` (``wandb sync`` uploads it).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L

from heartgpt.files import sha256_file

log = logging.getLogger("heartgpt.train")
MAX_TABLE_ROWS = 200_000  # W&B's own limit of a logged table


def wandb_loggers(trainer: L.Trainer) -> list[Any]:
    """The trainer's W&B loggers (rank 0 only: [] elsewhere)."""
    from lightning.pytorch.loggers import WandbLogger

    if not trainer.is_global_zero:
        return []
    return [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def checkpoint_metadata(path: str, trainer: L.Trainer, extra: Mapping[str, Any]) -> dict[str, Any]:
    """A checkpoint's artifact metadata: sha256, size, global step and epoch stored in it,
    ``extra`` (metrics)."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    return {"sha256": sha256_file(path), "bytes": Path(path).stat().st_size,
            "filename": Path(path).name, "global_step": int(state.get("global_step", 0)),
            "epoch": int(state.get("epoch", 0)), **extra}


def log_checkpoints(trainer: L.Trainer, best: str, fit_metrics: Mapping[str, Any],
                    tested: str | None, test_metrics: Mapping[str, Any] | None,
                    optimized_metric: str) -> list[str]:
    """Log the best and the last checkpoint of the fit as versions of ``model-<run id>`` (one
    version with both aliases when they are the same file), for every W&B logger whose
    ``log_model`` is on; returns the aliases logged. ``fit_metrics``: the trainer's metrics at
    the end of fitting (the last's ``final/val/...``); ``tested``: the checkpoint ``test=true``
    scored, ``test_metrics`` its metrics."""
    callback = trainer.checkpoint_callback
    loggers = [lg for lg in wandb_loggers(trainer) if getattr(lg, "log_checkpoints", False)]
    if callback is None or not loggers:
        return []
    last = callback.last_model_path
    files: dict[str, list[str]] = {}
    for alias, path in (("best", best or callback.best_model_path), ("last", last)):
        if path and Path(path).is_file():
            files.setdefault(str(Path(path).resolve()), []).append(alias)
    logged = []
    for path, aliases in files.items():
        extra: dict[str, Any] = {"optimized_metric": optimized_metric}
        if "best" in aliases and callback.monitor:
            extra.update(monitor=callback.monitor, mode=callback.mode,
                         score=_number(callback.best_model_score))
        if "last" in aliases:  # the metrics at the end of fitting
            extra.update({f"final/{k}": _number(v) for k, v in fit_metrics.items()
                          if k.startswith("val/") and _number(v) is not None})
        if tested and Path(tested).resolve() == Path(path):
            extra["test"] = {k: v for k, v in (test_metrics or {}).items()
                             if isinstance(v, int | float | None)}
        meta = checkpoint_metadata(path, trainer, extra)
        for lg in loggers:
            import wandb

            artifact = wandb.Artifact(f"model-{lg.experiment.id}", type="model", metadata=meta)
            artifact.add_file(path, name=Path(path).name)
            lg.experiment.log_artifact(artifact, aliases=aliases)
        logged += aliases
    log.info("W&B: checkpoint artifacts %s", ", ".join(logged))
    return logged


def _rows(path: Path) -> tuple[list[str], list[list[Any]]]:
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        rows = [[_cell(v) for v in row] for _, row in zip(range(MAX_TABLE_ROWS), reader,
                                                         strict=False)]
    return header, rows


def _cell(value: str) -> Any:
    """A CSV cell as a number where it is one (W&B plots numeric columns)."""
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def log_result_tables(trainer: L.Trainer, run_dir: str | Path, stage: str) -> list[str]:
    """Log ``<stage>_predictions.csv`` and ``<stage>_confusion_matrix.csv`` of ``run_dir`` (those
    that exist) to every W&B logger whose ``log_tables`` is on; returns the keys logged."""
    loggers = [lg for lg in wandb_loggers(trainer) if getattr(lg, "log_tables", True)]
    if not loggers:
        return []
    import wandb

    run_dir = Path(run_dir)
    logged: dict[str, Any] = {}
    predictions = run_dir / f"{stage}_predictions.csv"
    if predictions.is_file():
        header, rows = _rows(predictions)
        logged[f"{stage}/predictions"] = wandb.Table(columns=header, data=rows)
    confusion = run_dir / f"{stage}_confusion_matrix.csv"
    if confusion.is_file():
        header, rows = _rows(confusion)
        names = [str(n) for n in header[1:]]
        counts = wandb.Table(columns=["Actual", "Predicted", "nPredictions"],
                             data=[[str(row[0]), names[j], int(n)] for row in rows
                                   for j, n in enumerate(row[1:])])
        logged[f"{stage}/confusion_matrix_counts"] = counts
        logged[f"{stage}/confusion_matrix"] = wandb.plot_table(
            "wandb/confusion_matrix/v1", counts,
            {"Actual": "Actual", "Predicted": "Predicted", "nPredictions": "nPredictions"},
            {"title": f"{stage} confusion matrix"})
    for lg in loggers:
        if logged:
            lg.experiment.log(logged)
    return list(logged)


def log_folder(run: Any, folder: str | Path, name: str, kind: str = "model",
               metadata: Mapping[str, Any] | None = None, aliases: list[str] | None = None) -> Any:
    """Log every file of ``folder`` (e.g. ``python -m heartgpt.export format=hub``'s) as one
    artifact ``name`` of type ``kind`` to the W&B ``run``; its metadata the files' sha256."""
    import wandb

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder")
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    meta = {"files": {str(p.relative_to(folder)): sha256_file(p) for p in files},
            **(metadata or {})}
    artifact = wandb.Artifact(name, type=kind, metadata=meta)
    artifact.add_dir(str(folder))
    return run.log_artifact(artifact, aliases=aliases or ["latest"])


def log_folder_to_run(run_dir: str | Path, folder: str | Path, name: str | None = None,
                      project: str = "heartgpt", offline: bool = True) -> str:
    """Log ``folder`` as an artifact (type ``model``, named ``name`` or ``hub-<folder name>``)
    into the W&B run that trained ``run_dir`` (its ``wandb_run_id``), continued offline in
    ``<run dir>/wandb`` unless ``offline=False``; returns the run id."""
    import wandb

    from heartgpt.training.resume import WANDB_ID_FILE

    id_file = Path(run_dir) / WANDB_ID_FILE
    if not id_file.is_file():
        raise FileNotFoundError(f"{id_file}: missing: {run_dir} is not a run logged to W&B")
    run_id = id_file.read_text().strip()
    run = wandb.init(project=project, id=run_id, resume="allow", dir=str(run_dir),
                     mode="offline" if offline else "online", settings={"quiet": True})
    try:
        log_folder(run, folder, name or f"hub-{Path(folder).name}",
                   metadata={"run_dir": str(Path(run_dir).resolve())})
    finally:
        run.finish()
    return run_id
