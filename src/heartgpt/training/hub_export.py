"""``python -m heartgpt.export format=hub``: a checkpoint as a model-hub folder with its card.

:func:`export_hub` writes :mod:`heartgpt.model.hub_folder`'s files and the ``README.md`` of
:func:`heartgpt.model.model_card.model_card`, whose numbers come from the run the checkpoint
belongs to (``<run dir>/test_metrics.json``, the run dir being the checkpoint's parent's parent:
``<run dir>/checkpoints/last.ckpt``) and from an ``eval_metrics.json`` of
``python -m heartgpt.eval`` given as ``eval_metrics=``; what the run trained on, from its
``config.yaml`` (``data.shard_dir``). Uploading the folder is ``huggingface-cli upload
<user>/<repo> <folder>`` (docs/hub.md); nothing here reaches a hub.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from heartgpt.errors import InputError
from heartgpt.model.checkpoint_format import LoadedModel
from heartgpt.model.hub_folder import is_hub_weights, write_hub
from heartgpt.model.model_card import (
    Evaluation,
    from_eval_metrics,
    from_test_metrics,
    model_card,
)
from heartgpt.training.result_files import TEST_METRICS
from heartgpt.training.run import RESOLVED_CONFIG

log = logging.getLogger(__name__)


def run_folder(checkpoint: Path) -> Path | None:
    """The run folder of ``<run dir>/checkpoints/<file>.ckpt`` (None for other files)."""
    if checkpoint.suffix == ".ckpt" and checkpoint.parent.name == "checkpoints":
        return checkpoint.parent.parent
    return None


def _read_json(path: Path, key: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{key}={path}", "no such file") from None
    except (OSError, ValueError) as e:
        raise InputError(path, f"cannot read as JSON ({key}): {e}") from None
    if not isinstance(data, dict):
        raise InputError(path, f"is not a JSON object ({key})")
    return data


def run_shard_dir(run_dir: Path | None) -> str:
    """``data.shard_dir`` of the run's resolved ``config.yaml`` ('' when there is none)."""
    if run_dir is None or not (run_dir / RESOLVED_CONFIG).is_file():
        return ""
    try:
        value = OmegaConf.select(OmegaConf.load(run_dir / RESOLVED_CONFIG), "data.shard_dir")
    except Exception:  # an unreadable config only loses the line of the card
        return ""
    return str(value) if value else ""


def evaluations(checkpoint: Path, eval_metrics: str | None) -> tuple[list[Evaluation], str]:
    """The numbers of the card of ``checkpoint``: its run's ``test_metrics.json`` (when it is a
    run's checkpoint and the run tested) and the ``eval_metrics`` file (when given); and the
    run's shard folder.

    Raises:
        InputError: ``eval_metrics`` is missing or not a JSON object (naming it).
    """
    found: list[Evaluation] = []
    run_dir = run_folder(checkpoint)
    shard_dir = run_shard_dir(run_dir)
    if run_dir is not None and (run_dir / TEST_METRICS).is_file():
        found.append(from_test_metrics(_read_json(run_dir / TEST_METRICS, TEST_METRICS),
                                       shard_dir))
    if eval_metrics:
        found.append(from_eval_metrics(_read_json(Path(eval_metrics), "eval_metrics")))
    return found, shard_dir


def hub_name(checkpoint: Path) -> str:
    """The name of the default folder: the checkpoint's stem, or a hub folder's own name."""
    return checkpoint.parent.name if is_hub_weights(checkpoint) else checkpoint.stem


def export_hub(loaded: LoadedModel, checkpoint: Path, out: Path, license: str,
               eval_metrics: str | None = None) -> Path:
    """Write the hub folder of ``loaded`` (read from ``checkpoint``) at ``out`` with its model
    card (licence ``license``, numbers of :func:`evaluations`); returns ``out``."""
    found, shard_dir = evaluations(checkpoint, eval_metrics)
    for ev in found:
        log.info("model card: %d metrics of %s (split %s)", len(ev.metrics), ev.source, ev.split)
    return write_hub(loaded, out, model_card(loaded, found, license, out.name, shard_dir))
