"""Calibrating a checkpoint post hoc: the work of ``python -m heartgpt.calibrate``.

Loads ``cfg.checkpoint`` (any file :func:`~heartgpt.model.checkpoints.load_model` reads except an
ONNX export: the OOD reference reads hidden states), checks it against the labelled shards of
``cfg.data`` (modality, vocabulary, labels its head can read), fits its temperature on the
``calibration_split`` windows and its OOD reference on the ``reference_split`` windows
(:func:`heartgpt.model.trust.fit_trust`, with the settings of ``callbacks.calibration``) and
writes a new ``.ckpt`` (:func:`heartgpt.model.trust.write_calibrated`). Beside it in the run
directory, ``calibrate.json``: the temperature, the NLL, ECE and Brier score of the calibration
windows before and after, the OOD threshold and the files.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from heartgpt.data.shards import ShardError
from heartgpt.files import sha256_file, write_json_atomic
from heartgpt.model.checkpoint_format import CheckpointError, require_torch, warn_if_synthetic
from heartgpt.model.checkpoints import check_vocab, find_weights, load_model
from heartgpt.model.trust import (
    calibration_kind,
    collect,
    fit_trust,
    task_head_of,
    write_calibrated,
)
from heartgpt.training.calibration_report import ece_and_brier
from heartgpt.training.run import ensure_demo_shards, save_resolved_config

log = logging.getLogger(__name__)
CALIBRATE_REPORT = "calibrate.json"


def _loader(cfg: DictConfig, split: str) -> Any:
    """The evaluation loader of ``split`` (each window once, fixed) of ``cfg.data``."""
    datamodule = instantiate(cfg.data, _convert_="all", split=split)
    datamodule.prepare_data()
    datamodule.setup("test")
    loader = datamodule.test_dataloader()
    if not loader:
        raise ShardError(f"{cfg.data.shard_dir}: no windows in its {split} split (give "
                         f"calibration_split / reference_split = all, or other data.* fractions)")
    return datamodule, loader


def calibrate(cfg: DictConfig) -> dict[str, Any]:
    """Fit and store the trust state of ``cfg.checkpoint`` on ``cfg.data``; return the report
    (also ``<run dir>/calibrate.json``)."""
    L.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision(cfg.float32_matmul_precision)
    path = find_weights(cfg.checkpoint, cfg.paths.get("weights_dir")).resolve()
    loaded = load_model(path)
    gpt = require_torch(loaded, "calibration")
    warn_if_synthetic(loaded, log)
    modality = cfg.modality.name
    if loaded.modality is not None and loaded.modality != modality:
        raise CheckpointError(path, f"a {loaded.modality.upper()} checkpoint cannot be "
                              f"calibrated on {modality.upper()} data: give "
                              f"modality={loaded.modality}")
    check_vocab(loaded, cfg.modality.vocab_size, what=f"modality={modality}")
    head = task_head_of(loaded)
    with open_dict(cfg):
        cfg.model = OmegaConf.create(gpt.config.to_dict())  # data.block_size follows it
        if head is not None:
            cfg.data.label_kind = head.label_kind
    gpt.to(torch.device(cfg.device))
    ensure_demo_shards(cfg)
    datamodule, calibration_loader = _loader(cfg, cfg.calibration_split)
    if head is not None:
        why = head.check_labels(datamodule.label_schema)
        if why:
            raise ShardError(f"{cfg.data.shard_dir}: cannot calibrate {path.name} on these "
                             f"shards: {why}")
    _, reference_loader = _loader(cfg, cfg.reference_split)
    source = {"path": str(path), "sha256": sha256_file(path)}
    settings = OmegaConf.to_container(cfg.callbacks.calibration, resolve=True)
    calibration, reference = fit_trust(loaded, calibration_loader, reference_loader, settings,
                                       split=cfg.calibration_split,
                                       reference_split=cfg.reference_split,
                                       shard_dir=str(cfg.data.shard_dir), source=source)
    out_dir = Path(cfg.paths.output_dir)
    dest = Path(cfg.output) if cfg.get("output") else out_dir / f"{path.stem}_calibrated.ckpt"
    gpt.to("cpu")
    write_calibrated(loaded, dest, calibration, reference)
    report: dict[str, Any] = {
        "checkpoint": str(dest.resolve()), "source": source, "shard_dir": str(cfg.data.shard_dir),
        "calibration": calibration.to_dict() if calibration else None,
        "ood": {"threshold": reference.threshold, "threshold_level": reference.threshold_level,
                "windows": reference.windows, "quantile_windows": reference.quantile_windows,
                "pooling": reference.pooling, "split": reference.split,
                "shrinkage": reference.shrinkage}}
    kind = calibration_kind(head)
    if calibration is not None and kind is not None:  # before/after on the fitted windows
        logits, labels, _ = collect(loaded, calibration_loader, int(settings["max_windows"]), head)
        before = ece_and_brier(_probs(logits, kind, 1.0), labels, kind, int(cfg.calibration_bins))
        after = ece_and_brier(calibration.probabilities(logits).double(), labels, kind,
                              int(cfg.calibration_bins))
        report["fit_split_metrics"] = {**before, **{f"{k}_calibrated": v
                                                    for k, v in after.items()}}
    save_resolved_config(cfg)
    write_json_atomic(out_dir / CALIBRATE_REPORT, report)
    _print(report)
    return report


def _probs(logits: torch.Tensor, kind: str, temperature: float) -> torch.Tensor:
    from heartgpt.heads.calibration import scaled_probabilities

    return scaled_probabilities(logits, temperature, kind).double()


def _print(report: dict[str, Any]) -> None:
    cal, ood = report["calibration"], report["ood"]
    print(f"calibrated {Path(report['source']['path']).name} on {report['shard_dir']}")
    if cal:
        print(f"  temperature {cal['temperature']:.4f} on {cal['windows']} {cal['split']} windows "
              f"(NLL {cal['nll_before']:.4f} -> {cal['nll_after']:.4f})")
    else:
        print("  no temperature (the head predicts no classes)")
    metrics = report.get("fit_split_metrics")
    if metrics:
        print(f"  ECE {metrics['ece']:.4f} -> {metrics['ece_calibrated']:.4f}, Brier "
              f"{metrics['brier']:.4f} -> {metrics['brier_calibrated']:.4f} (fitted windows)")
    print(f"  OOD reference: {ood['windows']} {ood['split']} windows ({ood['pooling']} pooling), "
          f"threshold {ood['threshold']:.3f} (quantile {ood['threshold_level']})")
    print(f"-> {report['checkpoint']}")
