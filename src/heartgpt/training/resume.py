"""Resuming a run: which checkpoint ``ckpt_path=last`` means, and which W&B run to continue.

Each run directory holds ``checkpoints/last.ckpt`` (Lightning's ModelCheckpoint) and, when it
logs to W&B, ``wandb_run_id`` (written by :func:`save_wandb_id`), so that a run resumed from
one of its checkpoints keeps logging to the same W&B run. A run that completed its training
writes ``finished.json`` (:func:`mark_finished`): fine-tunes start only from finished runs.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_only

from heartgpt.errors import ConfigError

log = logging.getLogger(__name__)

WANDB_ID_FILE = "wandb_run_id"
FINISHED_FILE = "finished.json"


def _last_checkpoints(*roots: str | Path) -> list[Path]:
    return [p for root in roots if Path(root).is_dir() for p in Path(root).rglob("last*.ckpt")]


def is_finished(ckpt_path: str | Path) -> bool:
    """Whether the run that wrote ``ckpt_path`` completed its training (:func:`mark_finished`)."""
    return (run_dir_of(ckpt_path) / FINISHED_FILE).is_file()


def is_readable_checkpoint(path: Path) -> bool:
    """Whether ``path`` can be a whole ``torch.save`` file: not empty, and a zip archive whose
    directory (written last) is intact. A save cut short fails this without being unpickled."""
    try:
        if path.stat().st_size == 0:
            return False
        with zipfile.ZipFile(path) as zf:
            return bool(zf.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def find_last_checkpoint(*roots: str | Path, finished_only: bool = False) -> Path | None:
    """The most recently written readable ``last*.ckpt`` anywhere under ``roots`` (None if
    there is none); ``finished_only``: only those of runs that completed their training. A
    newer one that is empty or truncated is passed over with a warning naming it."""
    found = sorted((p for p in _last_checkpoints(*roots) if not finished_only or is_finished(p)),
                   key=lambda p: p.stat().st_mtime, reverse=True)
    for p in found:
        if is_readable_checkpoint(p):
            return p
        log.warning("passing over %s: empty or truncated (a save was interrupted)", p)
    return None


def unfinished_runs(*roots: str | Path, newer_than: Path | None = None) -> list[Path]:
    """Run directories under ``roots`` whose ``last*.ckpt`` is newer than ``newer_than`` (all,
    if None) but that did not finish: killed, pre-empted or still running. Newest first."""
    since = newer_than.stat().st_mtime if newer_than is not None else float("-inf")
    found = sorted((p for p in _last_checkpoints(*roots)
                    if not is_finished(p) and p.stat().st_mtime > since),
                   key=lambda p: p.stat().st_mtime, reverse=True)
    runs: list[Path] = []
    for p in found:
        if run_dir_of(p) not in runs:
            runs.append(run_dir_of(p))
    return runs


@rank_zero_only
def mark_finished(output_dir: str | Path, info: dict[str, Any]) -> None:
    """Write ``<run dir>/finished.json`` (rank 0 only): this run completed its training."""
    from heartgpt.files import write_json_atomic

    write_json_atomic(Path(output_dir) / FINISHED_FILE, info)


def resolve_ckpt_path(ckpt_path: str | None, output_dir: str | Path, runs_root: str | Path) -> str | None:
    """Turn the ``ckpt_path`` setting into a file to resume from, or None to start afresh.

    ``last`` means the newest ``last*.ckpt`` of this run directory, else of any run under
    ``runs_root`` (``<log_dir>/<run_name>``); when there is none yet, training starts from
    scratch (so a re-queued job can always say ``ckpt_path=last``). Any other value must be a file.
    """
    if not ckpt_path:
        return None
    if str(ckpt_path) == "last":
        found = find_last_checkpoint(output_dir) or find_last_checkpoint(runs_root)
        if found is None:
            log.warning("ckpt_path=last: no last*.ckpt under %s or %s; starting from scratch",
                        output_dir, runs_root)
            return None
        log.info("ckpt_path=last: resuming from %s", found)
        return str(found)
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path}: no such checkpoint file")
    if path.suffix != ".ckpt":
        raise ConfigError(
            "ckpt_path", f"{ckpt_path} is not one of our Lightning .ckpt files: ckpt_path= "
            "resumes the training state (optimiser, step, data position) of one; to start from "
            "the weights of a released .zip/.pth or a .safetensors export use module.init_from= "
            "(pre-training) or module.pretrained= (fine-tuning)")
    return str(path.resolve())


def run_dir_of(ckpt_path: str | Path) -> Path:
    """The run directory of a checkpoint written to ``<run dir>/checkpoints/``."""
    return Path(ckpt_path).resolve().parent.parent


def wandb_id_for(ckpt_path: str | Path | None) -> str | None:
    """The W&B run id stored in the run directory of ``ckpt_path``, if any."""
    if ckpt_path is None:
        return None
    f = run_dir_of(ckpt_path) / WANDB_ID_FILE
    return f.read_text().strip() or None if f.is_file() else None


@rank_zero_only
def save_wandb_id(output_dir: str | Path, run_id: str) -> None:
    """Remember this run's W&B id in its directory (rank 0 only)."""
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    (Path(output_dir) / WANDB_ID_FILE).write_text(f"{run_id}\n")
