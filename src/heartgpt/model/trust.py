"""The trust state of a loaded model (issue 29): its raw logits and pooled hidden states, its
calibrated probabilities, the out-of-distribution scores of windows, fitting both on labelled
batches, and storing them in a ``.ckpt``.

What a caller reads off a :class:`~heartgpt.model.checkpoint_format.LoadedModel`:
``loaded.calibration`` (a :class:`~heartgpt.heads.calibration.Calibration` or None) and
``loaded.ood_reference`` (an :class:`~heartgpt.heads.calibration.OodReference` or None).
:func:`window_outputs` gives a batch's raw logits and pooled hidden states in one forward pass,
:func:`calibrated_probabilities` and :func:`ood_scores` / :func:`ood_percentiles` read them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from heartgpt.files import atomic_path, sha256_file
from heartgpt.heads.calibration import (
    Calibration,
    OodReference,
    fit_calibration,
    fit_ood_reference,
    pooled_hidden,
    reference_pooling,
    scaled_probabilities,
)
from heartgpt.heads.objectives import BinaryObjective, MulticlassObjective
from heartgpt.heads.registry import build_head
from heartgpt.heads.task_head import TaskHead
from heartgpt.model.checkpoint_format import (
    HPARAMS_KEY,
    MODEL_PREFIX,
    STATE_KEY,
    TASK_HEAD_PREFIX,
    TRUST_KEY,
    CheckpointError,
    LoadedModel,
    load_weights_only,
    require_torch,
)

log = logging.getLogger(__name__)
CALIBRATED_FROM = "calibrated_from"  # hparams of a calibrate output: {"path", "sha256"}
_KEPT_KEYS = (STATE_KEY, HPARAMS_KEY, "base_weights", "pytorch-lightning_version")


def task_head_of(loaded: LoadedModel) -> TaskHead | None:
    """``loaded``'s task head rebuilt with its own tensors (None: a pre-trained model).

    Raises:
        CheckpointError: naming the file: the head cannot be rebuilt or lacks its tensors.
    """
    if not loaded.head:
        return None
    try:
        head = build_head(loaded.head, int(loaded.model.config.n_embd))
    except ValueError as e:
        raise CheckpointError(loaded.source, str(e)) from None
    wanted = head.state_dict()
    missing = sorted(set(wanted) - set(loaded.head_state))
    if missing:
        raise CheckpointError(loaded.source, f"has no {', '.join(missing)} for its head")
    if wanted:
        head.load_state_dict({k: loaded.head_state[k] for k in wanted}, strict=True)
    return head.eval()


def calibration_kind(task_head: TaskHead | None) -> str | None:
    """'binary' | 'multiclass' for a classifying head, None for values or no head."""
    if task_head is None:
        return None
    objective = task_head.objective
    if isinstance(objective, BinaryObjective):
        return "binary"
    return "multiclass" if isinstance(objective, MulticlassObjective) else None


@torch.no_grad()
def window_outputs(loaded: LoadedModel, tokens: torch.Tensor, task_head: TaskHead | None = None,
                   pooling: str | None = None) -> tuple[torch.Tensor | None, torch.Tensor]:
    """One forward pass of ``tokens`` (B, T): the head's raw outputs (logits: (B, n_out) per
    window, (B, P, n_out) per position; None for a pre-trained model) and the (B, C) pooled
    hidden states the OOD reference reads. ``task_head``: :func:`task_head_of` ``loaded``
    (pass it to save rebuilding it every batch); ``pooling``: of the hidden states (default:
    that of ``loaded.ood_reference``, else 'mean')."""
    gpt = require_torch(loaded, "trust scores (they read the hidden states)")
    head = task_head if task_head is not None else task_head_of(loaded)
    if pooling is None:
        pooling = loaded.ood_reference.pooling if loaded.ood_reference is not None else "mean"
    device = next(gpt.parameters()).device
    if head is not None:
        head = head.to(device)
    hidden = gpt.hidden(tokens.to(device))
    pooled = pooled_hidden(pooling, head.reduction if head is not None else None, hidden)
    logits = head(gpt.head(hidden), hidden).float() if head is not None else None
    return logits, pooled


def calibrated_probabilities(loaded: LoadedModel, logits: torch.Tensor) -> torch.Tensor | None:
    """Probabilities of raw ``logits`` (:func:`window_outputs`) scaled by ``loaded``'s
    temperature (binary: the positive class's (...,), multiclass (..., K)); None when it stores
    no calibration."""
    cal = loaded.calibration
    return None if cal is None else scaled_probabilities(logits, cal.temperature, cal.kind)


def ood_scores(loaded: LoadedModel, tokens: torch.Tensor | None = None,
               pooled: torch.Tensor | None = None) -> torch.Tensor | None:
    """(B,) Mahalanobis distances of windows from ``loaded``'s training windows (None: it
    stores no OOD reference, the score is unavailable). Give ``tokens`` (B, T), or the
    ``pooled`` hidden states :func:`window_outputs` returned (no second forward pass)."""
    ref = loaded.ood_reference
    if ref is None:
        return None
    if pooled is None:
        if tokens is None:
            raise ValueError("ood_scores needs tokens or pooled hidden states")
        _, pooled = window_outputs(loaded, tokens)
    return ref.distances(pooled.cpu())


def ood_percentiles(loaded: LoadedModel, distances: torch.Tensor) -> torch.Tensor | None:
    """(B,) percentiles (0-100) of ``distances`` among held-out in-distribution windows; a
    window above ``loaded.ood_reference.threshold`` (its ``threshold_level`` quantile) is out
    of distribution. None without a reference."""
    ref = loaded.ood_reference
    return None if ref is None else ref.percentiles(distances)


def collect(loaded: LoadedModel, batches: Iterable[Mapping[str, Any]], max_windows: int,
            task_head: TaskHead | None = None, pooling: str | None = None
            ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
    """Raw logits, labels and pooled hidden states (``pooling``: see :func:`window_outputs`)
    of up to ``max_windows`` windows of ``batches`` (dicts of ``tokens`` and the head's
    ``label`` / ``targets``), on the CPU. Per-position heads flatten their positions (NaN
    targets left out)."""
    head = task_head if task_head is not None else task_head_of(loaded)
    logits_parts, label_parts, pooled_parts, seen = [], [], [], 0
    for batch in batches:
        if seen >= max_windows:
            break
        take = min(int(batch["tokens"].shape[0]), max_windows - seen)
        logits, pooled = window_outputs(loaded, batch["tokens"][:take], head, pooling)
        pooled_parts.append(pooled.cpu())
        seen += take
        if logits is None or head is None or head.batch_key not in batch:
            continue
        target = batch[head.batch_key][:take].cpu()
        logits = logits.cpu().reshape(-1, logits.shape[-1])
        target = target.reshape(-1)
        ok = torch.isfinite(target.float())
        logits_parts.append(logits[ok])
        label_parts.append(target[ok])
    if not pooled_parts:
        raise ValueError("no windows to fit the trust state on")
    pooled_all = torch.cat(pooled_parts)
    if not logits_parts:
        return None, None, pooled_all
    return torch.cat(logits_parts), torch.cat(label_parts), pooled_all


def fit_trust(loaded: LoadedModel, calibration_batches: Iterable[Mapping[str, Any]],
              reference_batches: Iterable[Mapping[str, Any]], settings: Mapping[str, Any],
              split: str, reference_split: str, shard_dir: str = "",
              source: dict[str, str] | None = None) -> tuple[Calibration | None, OodReference]:
    """Fit ``loaded``'s temperature on ``calibration_batches`` (labelled, e.g. the validation
    split; none for a regression head, or when ``settings.temperature`` is false) and its OOD
    reference on ``reference_batches`` (training windows), its quantiles on the calibration
    windows. ``settings``: ``max_windows``, ``max_reference_windows``, ``temperature``,
    ``lbfgs_iterations``, ``ood_pooling``, ``ood_levels``, ``ood_threshold_level``,
    ``ood_shrinkage``
    (``conf/callbacks/default.yaml: calibration``)."""
    head = task_head_of(loaded)
    pooling = reference_pooling(str(settings["ood_pooling"]),
                                head.reduction if head is not None else None)
    logits, labels, held_out = collect(loaded, calibration_batches, int(settings["max_windows"]),
                                       head, pooling)
    _, _, features = collect(loaded, reference_batches, int(settings["max_reference_windows"]),
                             head, pooling)
    kind = calibration_kind(head)
    calibration = None
    if kind is not None and settings.get("temperature", True) and logits is not None:
        calibration = fit_calibration(logits, labels, kind, split, shard_dir, source,
                                      int(settings["lbfgs_iterations"]))
        log.debug("temperature %.4f on %d %s windows (NLL %.4f -> %.4f)", calibration.temperature,
                 calibration.windows, split, calibration.nll_before, calibration.nll_after)
    shrinkage = settings.get("ood_shrinkage")
    reference = fit_ood_reference(features, held_out, list(settings["ood_levels"]),
                                  float(settings["ood_threshold_level"]),
                                  None if shrinkage is None else float(shrinkage),
                                  pooling, reference_split)
    log.debug("OOD reference of %d %s windows (threshold %.3f at the %.0f%% of %d %s windows)",
             reference.windows, reference_split, reference.threshold,
             100 * reference.threshold_level, reference.quantile_windows, split)
    return calibration, reference


def trust_entry(calibration: Calibration | None, reference: OodReference | None) -> dict[str, Any]:
    """The checkpoint's :data:`~heartgpt.model.checkpoint_format.TRUST_KEY` value."""
    return {"calibration": calibration.to_dict() if calibration else None,
            "ood_reference": reference.to_dict() if reference else None}


def store_trust(path: str | os.PathLike, calibration: Calibration | None,
                reference: OodReference | None) -> None:
    """Put the trust state into our ``.ckpt`` ``path`` (rewritten atomically: a reader sees
    the old file or the new one); everything else in it stays as it was."""
    path = Path(path)
    ckpt = load_weights_only(path, path, "a Lightning checkpoint")
    if not isinstance(ckpt, dict) or STATE_KEY not in ckpt:
        raise CheckpointError(path, "not a heartgpt Lightning checkpoint: no 'state_dict'")
    ckpt[TRUST_KEY] = trust_entry(calibration, reference)
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)


def write_calibrated(loaded: LoadedModel, dest: str | os.PathLike,
                     calibration: Calibration | None, reference: OodReference | None) -> Path:
    """A new ``.ckpt`` at ``dest`` (atomic) holding ``loaded``'s model and head as
    :func:`~heartgpt.model.checkpoints.load_model` reads them back, its trust state, and in its
    hyper-parameters ``calibrated_from``: the path and sha256 of ``loaded.source``.

    Our ``.ckpt`` sources keep their state dict and hyper-parameters (a LoRA run's reference
    to its base too), optimiser state dropped; other files (released, safetensors) become a
    ``.ckpt`` of their weights, head and modality."""
    source = Path(loaded.source)
    gpt = require_torch(loaded, "calibrate")
    origin = {"path": str(source.resolve()), "sha256": sha256_file(source)}
    if source.suffix == ".ckpt":
        raw = load_weights_only(source, source, "a Lightning checkpoint")
        ckpt = {k: raw[k] for k in _KEPT_KEYS if k in raw}
        ckpt[HPARAMS_KEY] = dict(ckpt[HPARAMS_KEY])
    else:
        hparams: dict[str, Any] = {
            "model_config": gpt.config.to_dict(), "modality": loaded.modality,
            "task": loaded.task, "head": dict(loaded.head) if loaded.head else None,
            "synthetic_data": loaded.synthetic, **{k: v for k, v in loaded.hparams.items()
                                                   if k == "label_schema"}}
        state = {MODEL_PREFIX + k: v.detach().cpu() for k, v in gpt.state_dict().items()}
        state.update({TASK_HEAD_PREFIX + k: v for k, v in loaded.head_state.items()})
        ckpt = {STATE_KEY: state, HPARAMS_KEY: hparams}
    ckpt[HPARAMS_KEY][CALIBRATED_FROM] = origin
    ckpt[TRUST_KEY] = trust_entry(calibration, reference)
    dest = Path(dest)
    with atomic_path(dest) as tmp:
        torch.save(ckpt, tmp)
    return dest
