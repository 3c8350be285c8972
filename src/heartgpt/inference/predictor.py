"""Applying a model to many recordings: the work of ``python -m heartgpt.predict``.

The model is loaded once per process and checked against the mode (:data:`MODEL_NEED`).
Lightning runs :class:`PredictionModule.predict_step` on one recording at a time from
:class:`~heartgpt.data.recording_set.RecordingDataModule` (``trainer.devices=N``: each process
takes every N-th recording), and :class:`PredictionWriter` stores each result as soon as it is
done (:class:`~heartgpt.inference.prediction_store.PredictionStore`), so a killed run resumes
where it stopped. Rank 0 then writes the tables and prints the summary.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import BasePredictionWriter
from omegaconf import DictConfig, OmegaConf

from heartgpt.data.plausibility import check_recording
from heartgpt.data.recording_set import RecordingDataModule, RecordingItem
from heartgpt.data.signal_quality import trust_settings
from heartgpt.data.tokenizer import Modality
from heartgpt.errors import InputError, error_line
from heartgpt.files import sha256_file
from heartgpt.heads.applied import AppliedHead
from heartgpt.inference.head_prediction import values_against_training
from heartgpt.inference.loading import load_tool_model, window_probability_model
from heartgpt.inference.prediction import (
    AUTO,
    MODEL_NEED,
    MODES,
    RecordingPrediction,
    check_mode,
    default_mode,
    predict_recording,
)
from heartgpt.inference.prediction_store import ITEM_TABLES, RECORDINGS, PredictionStore
from heartgpt.inference.window_trust import TrustContext, trust_context
from heartgpt.model import GPT
from heartgpt.model.checkpoint_format import LoadedModel, require_torch, warn_if_synthetic
from heartgpt.model.checkpoints import find_weights, head_applied, load_model

log = logging.getLogger(__name__)
VALUES = "values"  # summary.json: a value head's predictions beside the training mean and SD
UNRELIABLE = "unreliable_windows"  # summary.json: windows the trust checks left out, by reason


def unreliable_windows(items: list[dict[str, Any]]) -> dict[str, Any]:
    """How many of the run's scored windows the trust checks found unreliable, and why."""
    windows = {(i.get("recording"), i.get("window")): i for i in items if "reliable" in i}
    judged = list(windows.values())  # a tag head's positions share their window's verdict
    reasons: dict[str, int] = {}
    for item in judged:
        for part in filter(None, str(item.get("unreliable_reason") or "").split(";")):
            reasons[part.strip()] = reasons.get(part.strip(), 0) + 1
    return {"judged": len(judged), "unreliable": sum(not i["reliable"] for i in judged),
            "reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1]))}


class PredictionModule(L.LightningModule):
    """``predict_step``: one :class:`RecordingItem` -> ``(item, result or error, seconds)``.

    A recording that evidently is the other modality fails with that reason unless the user
    stated the modality (``modality_stated``); an implausible rhythm is a logged warning
    (:func:`heartgpt.data.plausibility.check_recording`).
    """

    def __init__(self, model: GPT, modality: Modality, mode: dict[str, Any],
                 modality_stated: bool = False, trust: TrustContext | None = None) -> None:
        super().__init__()
        self.model, self.modality, self.mode = model, modality, dict(mode)
        self.modality_stated, self.trust = modality_stated, trust

    def predict_step(self, batch: RecordingItem, batch_idx: int
                     ) -> tuple[RecordingItem, RecordingPrediction | str, float]:
        start = time.perf_counter()
        if batch.error is not None:
            return batch, batch.error, 0.0
        rec = batch.recording
        try:
            for warning in check_recording(rec.path, rec.signal, rec.sample_rate,
                                           self.modality.name, stated=self.modality_stated):
                log.warning("%s: %s", rec.path, warning)
            result: RecordingPrediction | str = predict_recording(
                self.model, rec, self.modality, self.mode, self.trust)
        except ValueError as e:  # too short, no usable window, bad settings: this file only
            result = error_line(e)
        return batch, result, time.perf_counter() - start


class PredictionWriter(BasePredictionWriter):
    """Stores every recording's result as soon as its batch ends (the resume state)."""

    def __init__(self, store: PredictionStore) -> None:
        super().__init__(write_interval="batch")
        self.store = store
        self.failed = 0

    def write_on_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           prediction: tuple[RecordingItem, RecordingPrediction | str, float],
                           batch_indices: Sequence[int] | None, batch: Any, batch_idx: int,
                           dataloader_idx: int) -> None:
        item, result, seconds = prediction
        rec = item.recording
        duration = len(rec.signal) / rec.sample_rate if rec is not None else None
        self.store.write(item.file, rec.sample_rate if rec is not None else None, duration,
                         result, seconds)
        if isinstance(result, str):
            self.failed += 1
            log.warning("skipped %s: %s", item.file.path, result)


def stated_modality(cfg: DictConfig) -> str | None:
    """The recordings' modality the user stated (``modality=ecg``: the ``modality`` group's
    choice), or None (the checkpoint's)."""
    chosen = cfg.get("modality")
    return None if chosen is None else str(chosen.name)


def run_settings(cfg: DictConfig, checkpoint: Path, modality: Modality,
                 mode: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a result depends on: a re-run into the same folder must have the same
    (``mode``: the settings used, default ``cfg.mode``)."""
    return {
        "checkpoint": str(checkpoint.resolve()),
        "checkpoint_sha256": sha256_file(checkpoint),
        "mode": OmegaConf.to_container(cfg.mode, resolve=True) if mode is None else mode,
        "modality": modality.name,
        "channel": cfg.channel,
        "sample_rate": cfg.sample_rate,
        "format": cfg.format,
        "csv_decimal": cfg.csv_decimal,
        "trust": OmegaConf.to_container(cfg.trust, resolve=True),
    }


def predict(cfg: DictConfig) -> dict[str, Any] | None:
    """Predict every recording of ``cfg.inputs`` into ``cfg.out_dir``; the summary on rank 0
    (``None`` on the other ranks).

    Raises:
        InputError: a checkpoint unfit for the mode, inputs with no recording, an ``out_dir``
            holding results of other settings, a recording left without a result.
    """
    mode = str(cfg.mode.name)
    if mode not in (*MODES, AUTO):
        raise InputError("mode", f"must be one of {MODES}, got {mode!r}")
    checkpoint = find_weights(cfg.checkpoint, cfg.paths.weights_dir)
    loaded = load_model(checkpoint)
    model, modality, mode, settings = prepare_model(
        loaded, OmegaConf.to_container(cfg.mode, resolve=True), stated_modality(cfg),
        source=checkpoint)
    trust = trust_context(loaded, trust_settings(cfg.trust))
    if cfg.sample_rate is not None and float(cfg.sample_rate) <= 0:
        raise InputError("sample_rate", f"must be a positive rate in Hz, got {cfg.sample_rate}")
    store = PredictionStore(cfg.out_dir, mode)
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    trainer: L.Trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False,
                                     callbacks=[PredictionWriter(store)])
    if trainer.global_rank == 0:  # other processes start inside trainer.predict, after this
        store.claim(run_settings(cfg, checkpoint, modality, settings), overwrite=bool(cfg.overwrite))
    data = RecordingDataModule(OmegaConf.to_container(cfg.inputs) if OmegaConf.is_list(cfg.inputs)
                               else str(cfg.inputs), cfg.format, cfg.channel, cfg.sample_rate,
                               csv_decimal=str(cfg.csv_decimal), skip=store.done, num_workers=int(cfg.num_workers),
                               exclude_dirs=[cfg.out_dir, cfg.paths.log_dir])
    module = PredictionModule(model, modality, settings,
                              modality_stated=stated_modality(cfg) is not None, trust=trust)
    start = time.perf_counter()
    with warnings.catch_warnings():  # an empty share means "all done", not a mistake
        warnings.filterwarnings("ignore", message="Total length of `DataLoader` across ranks")
        trainer.predict(module, datamodule=data, return_predictions=False)
    trainer.strategy.barrier()
    if trainer.global_rank != 0:
        return None
    ratio = float(settings.get("collapse_sd_ratio") or 0.0)

    def describe(items: list[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {UNRELIABLE: unreliable_windows(items)}
        if isinstance(model, AppliedHead) and mode == "head":
            out[VALUES] = values_against_training(model, items, ratio)
        return out

    summary = store.merge(data.records, data.done, time.perf_counter() - start, describe)
    print(summary_text(summary, store))
    for name, spread in summary.get(VALUES, {}).items():
        if spread["collapsed"]:
            log.warning("%s: the predictions barely vary (SD %.4g over %d values, under %g x the "
                        "training SD %.4g) around %.4g (the training mean: %.4g): the regressor "
                        "may have collapsed to the mean; eval on labelled shards says whether it "
                        "beats always predicting it", name, spread["sd"], spread["n"],
                        float(settings["collapse_sd_ratio"]), spread["training_sd"],
                        spread["mean"], spread["training_mean"])
    return summary


def prepare_model(loaded: LoadedModel, settings: Mapping[str, Any], modality: str | None = None,
                  source: str | os.PathLike | None = None
                  ) -> tuple[GPT | AppliedHead, Modality, str, dict[str, Any]]:
    """The model ``predict`` runs, its modality, the mode and its settings, for the checkpoint
    ``loaded`` and the mode ``settings`` (``name``: a mode, or ``auto``: the mode of what the
    checkpoint is, :func:`default_mode`, with that mode's own settings and the non-null keys
    ``settings`` sets). The model is checked against the mode and the settings
    (:func:`check_mode`); a head is rebuilt into an :class:`AppliedHead` for ``mode=head``.
    ``predict`` and :func:`heartgpt.inference.apply.apply` both start here; errors name
    ``source`` (default: the file ``loaded`` came from).

    Raises:
        InputError: naming the checkpoint (unfit for the mode, a head that cannot be rebuilt)
            or ``mode.<key>`` (a setting the mode does not read, or a bad value).
    """
    checkpoint = loaded.source if source is None else source
    mode, settings = str(settings["name"]), dict(settings)
    if mode == AUTO:  # what the checkpoint is, with that mode's own settings
        mode = default_mode(loaded.model.config.out_features, loaded.task, loaded.head)
        settings = mode_settings(mode, settings, checkpoint)
        log.info("mode=%s: what %s is", mode, Path(checkpoint).name)
    need, refuse = MODEL_NEED[mode]
    loaded, mod = load_tool_model(checkpoint, need, modality, refuse_task=refuse, loaded=loaded)
    warn_if_synthetic(loaded, log)
    check_mode(settings, loaded.model.config.block_size)
    model: GPT | AppliedHead = loaded.model
    if mode == "af":
        model = window_probability_model(loaded)
    if mode == "embed":
        require_torch(loaded, "mode=embed (hidden states)")
    if mode == "head":
        gpt = loaded.model if getattr(loaded.model, "applies_head", False) else \
            require_torch(loaded, "mode=head (the head reads hidden states)")
        model = head_applied(loaded, gpt)
        if model.reading.names_from != "label_schema":
            log.warning("%s stores no label schema: its outputs are named %s", checkpoint,
                        ", ".join(model.reading.columns))
    return model, mod, mode, settings


def mode_settings(name: str, given: Mapping[str, Any] | None = None,
                  checkpoint: Path | str = "") -> dict[str, Any]:
    """The settings of ``conf/mode/<name>.yaml`` (the ``auto`` mode's choice for
    ``checkpoint``), with the keys ``given`` sets (not null) in place of its own.

    Raises:
        InputError: ``mode.<key>`` given that mode ``name`` does not read.
    """
    from importlib.resources import files

    text = (files("heartgpt.conf") / "mode" / f"{name}.yaml").read_text()  # conf/, installed
    settings = dict(OmegaConf.to_container(OmegaConf.create(text), resolve=True))
    for key, value in (given or {}).items():
        if key == "name" or value is None:
            continue
        if key not in settings:
            raise InputError(f"mode.{key}", f"mode=auto chose mode={name} for {checkpoint}, "
                             f"which has no {key}; name the mode you mean (mode=...)")
        settings[key] = value
    return settings


def summary_text(summary: dict[str, Any], store: PredictionStore) -> str:
    """The closing lines: counts, failures (the first 5), signal hours, speed, files."""
    unread = summary.get("not_recordings", 0)  # files of no supported format, among the failed
    lines = [f"predict {summary['mode']}: {summary['recordings']} recordings, {summary['ok']} ok, "
             f"{summary['failed']} failed{f' ({unread} not recordings)' if unread else ''}, "
             f"{summary['done_in_earlier_runs']} done in an earlier "
             f"run; {summary['hours_of_signal']:.2f} h of signal"]
    if "recordings_per_minute" in summary:
        lines.append(f"  this run: {summary['predicted_now']} recordings in "
                     f"{summary['wall_seconds']:.1f} s ({summary['recordings_per_minute']:.1f} "
                     f"recordings/min, {summary['signal_hours_per_minute']:.2f} h of signal/min)")
    for name, why in list(summary["failures"].items())[:5]:
        lines.append(f"  failed {name}: {why}")
    if summary["failed"] > 5:
        lines.append(f"  ... {summary['failed'] - 5} more in {store.out_dir / RECORDINGS}")
    checked = summary.get(UNRELIABLE, {})
    if checked.get("judged"):
        reasons = ", ".join(f"{r} {n}" for r, n in checked["reasons"].items())
        lines.append(f"  trust: {checked['unreliable']} of {checked['judged']} windows unreliable"
                     f"{': ' + reasons if reasons else ''} (left out of the recordings' numbers)")
    for name, spread in summary.get(VALUES, {}).items():
        if spread["n"]:
            lines.append(f"  {name}: mean {spread['mean']:.4g}, SD {spread['sd']:.4g} over "
                         f"{spread['n']} values; the training split's mean {spread['training_mean']:.4g}"
                         f", SD {spread['training_sd']:.4g} (always predicting it: the mean "
                         "baseline)" + ("; COLLAPSED to about one value" if spread["collapsed"]
                                        else ""))
    lines.append(f"  -> {store.out_dir / RECORDINGS}, {store.out_dir / ITEM_TABLES[summary['mode']]}")
    return "\n".join(lines)
