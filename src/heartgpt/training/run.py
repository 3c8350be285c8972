"""The run toolkit: composing a config from Python, preparing a run, its Trainer, and
:func:`train`, the whole job of ``python -m heartgpt.train`` for a composed config (tests,
notebooks and :mod:`heartgpt.cv` call it directly, with :func:`compose_config`).

:mod:`heartgpt.training.evaluation` builds its Trainer with the same pieces
(:func:`start_trainer`, :func:`instantiate_all`, :func:`closing_wandb`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

import heartgpt.training.resolvers  # noqa: F401  (registers ${cwd:} and ${latest_ckpt:} before Hydra composes)
from heartgpt.errors import ConfigError
from heartgpt.files import sha256_file, write_text_atomic
from heartgpt.model.checkpoints import check_starting_point, find_weights, load_model
from heartgpt.model.gpt import GPTConfig
from heartgpt.training.batching import apply_batch_plan
from heartgpt.training.environments import detected_environments
from heartgpt.training.renamed_keys import TRAIN_RENAMES, check_config, check_overrides
from heartgpt.training.result_files import TEST_PREDICTIONS, read_test_metrics, write_test_metrics
from heartgpt.training.resume import mark_finished, resolve_ckpt_path, save_wandb_id, wandb_id_for
from heartgpt.training.wandb_artifacts import log_checkpoints, log_result_tables

log = logging.getLogger("heartgpt.train")  # what a run logs keeps its name in train.log
CONF_MODULE = "heartgpt.conf"  # conf/ of the repository, installed as heartgpt.conf
RESOLVED_CONFIG = "config.yaml"  # <run dir>/config.yaml: the run's config as it ran, resolved
INITIAL_WEIGHTS_KEYS = ("pretrained", "init_from")  # module.<key>: the weights a run starts from


def compose_config(overrides: list[str] | None = None, config_name: str = "train") -> DictConfig:
    """``conf/<config_name>.yaml`` (``train``, ``eval`` or ``predict``: their commands) composed with
    ``overrides`` as its command would, for use from Python (notebooks, :mod:`heartgpt.cv`): the
    run directory is a new ``<log_dir>/<run_name>/runs/<date_time>`` relative to the current
    directory."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    GlobalHydra.instance().clear()
    with initialize_config_module(CONF_MODULE, version_base="1.3"):
        check_overrides(overrides or [], TRAIN_RENAMES)
        cfg = compose(config_name, overrides=list(overrides or []), return_hydra_config=True)
        check_config(cfg, TRAIN_RENAMES)
    runtime = cfg.hydra.runtime
    with read_write(runtime), open_dict(runtime):
        runtime.cwd = str(Path.cwd())
    HydraConfig().set_config(cfg)  # for ${hydra:runtime.cwd} in hydra.run.dir
    run_dir = str(Path(cfg.hydra.run.dir).resolve())
    with read_write(runtime), open_dict(runtime):
        runtime.output_dir = run_dir
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths = OmegaConf.create(OmegaConf.to_container(cfg.paths, resolve=True))
        del cfg["hydra"]
    return cfg


def ensure_demo_shards(cfg: DictConfig) -> None:
    """Build the SYNTHETIC demo set that ``data.shard_dir`` names when it is under
    ``<data_dir>/demo`` and has no manifest yet, as ``python -m heartgpt.prepare source=demo``
    builds it (settings: the ``demo`` section of ``conf/prepare.yaml``): the classic sets for
    pretrain/af/beats, the targets demo for hr/rhythm/hr_tag."""
    from heartgpt.data.shards import MANIFEST_NAME
    from heartgpt.training.preparation import build_demo_sets, demo_set_config

    shard_dir = cfg.data.get("shard_dir")
    if not shard_dir or (Path(shard_dir) / MANIFEST_NAME).is_file():
        return
    demo_root = (Path(cfg.paths.data_dir) / "demo").resolve()
    try:
        modality, shard_set = Path(shard_dir).resolve().relative_to(demo_root).parts[:2]
    except (ValueError, IndexError):
        return  # not demo data: the DataModule reports what is missing
    prep = demo_set_config(cfg, modality, shard_set) if modality in ("ecg", "ppg") else None
    if prep is None:
        return  # not a demo set: the DataModule reports what is missing
    log.info("building the SYNTHETIC demo shards (%s) in %s", ", ".join(prep.demo.sets),
             demo_root / modality)
    build_demo_sets(prep)


SYNTHETIC_WARNING = ("trained on SYNTHETIC demo data (%s): its losses and metrics say nothing "
                     "about real ECG/PPG; prepare real recordings and set data.shard_dir")


def mark_synthetic(cfg: DictConfig) -> bool:
    """Whether ``data.shard_dir`` holds the SYNTHETIC demo (its manifest says so); if it does,
    say it at the start and tag the run ``synthetic`` (W&B tags follow ``tags``)."""
    from heartgpt.data.shards import MANIFEST_NAME, read_manifest

    shard_dir = cfg.data.get("shard_dir")
    if not shard_dir or not (Path(shard_dir) / MANIFEST_NAME).is_file():
        return False  # the DataModule reports a missing set
    if not read_manifest(shard_dir).meta.synthetic:
        return False
    rank_zero_only(log.warning)(SYNTHETIC_WARNING.replace("trained on", "training on"), shard_dir)
    with open_dict(cfg):
        cfg.tags = [*(cfg.get("tags") or []), "synthetic"]
    return True


def resolve_initial_weights(cfg: DictConfig) -> None:
    """Pin ``module.pretrained`` / ``module.init_from`` to the file they name, as an absolute path
    (a bare released name is looked up in ``paths.weights_dir``, see
    :func:`heartgpt.model.checkpoints.find_weights`), and record it with its sha256 in the top-level
    ``initial_weights``, so the run's config says what the run started from (a
    ``${latest_ckpt:}`` is resolved once, here; the checkpoints record it too, see
    :class:`heartgpt.training.base.GPTLightningModule`)."""
    module = cfg.get("module") or {}
    for key in INITIAL_WEIGHTS_KEYS:
        name = module.get(key)
        if not name:
            continue
        path = find_weights(name, cfg.paths.get("weights_dir")).resolve()
        # before anything starts: a checkpoint of another modality, shape or task stops here
        check_starting_point(load_model(path), GPTConfig.from_dict(plain_dict(cfg.model)),
                             cfg.modality.name, module.get("task", "pretrain"))
        digest = sha256_file(path)
        log.info("module.%s: %s (sha256 %s)", key, path, digest)
        with open_dict(cfg):
            cfg.module[key] = str(path)
            cfg.initial_weights = {"key": f"module.{key}", "path": str(path), "sha256": digest}


@rank_zero_only
def save_resolved_config(cfg: DictConfig) -> None:
    """``<run dir>/config.yaml``: the config exactly as this run used it, every interpolation
    resolved (``.hydra/config.yaml`` keeps them as written). Rank 0 only."""
    write_text_atomic(Path(cfg.paths.output_dir) / RESOLVED_CONFIG, OmegaConf.to_yaml(cfg, resolve=True))


def instantiate_all(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a config group of named objects (callbacks, loggers)."""
    if not group:
        return []
    return [instantiate(node, _convert_="all") for node in group.values()
            if isinstance(node, DictConfig) and "_target_" in node]


def start_trainer(cfg: DictConfig, callbacks: list[L.Callback], loggers: list[Logger]
                  ) -> L.Trainer:
    """The run's Trainer from ``cfg.trainer``; writes the resolved ``config.yaml`` and gives the
    loggers the resolved config as hyper-parameters."""
    plugins = [*instantiate(cfg.trainer.get("plugins") or [], _convert_="all"),
               *detected_environments()]  # e.g. the ranks of submitit's local executor
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                                     plugins=plugins or None, _convert_="all")
    save_resolved_config(cfg)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    for lg in trainer.loggers:
        lg.log_hyperparams(resolved)
    return trainer


@contextmanager
def closing_wandb(trainer: L.Trainer) -> Iterator[None]:
    """Finish the W&B run (rank 0) when the block ends, an error included, so that its offline
    files are complete and the next run in this process starts a new one."""
    try:
        yield
    finally:
        if any(isinstance(lg, WandbLogger) for lg in trainer.loggers) and trainer.is_global_zero:
            import wandb

            wandb.finish()


def continue_wandb_run(cfg: DictConfig, ckpt_path: str | None) -> None:
    """Point ``logger.wandb.id`` at the W&B run of the run directory being resumed (if unset)."""
    wandb_cfg = (cfg.get("logger") or {}).get("wandb")
    run_id = wandb_id_for(ckpt_path)
    if wandb_cfg is not None and wandb_cfg.get("id") is None and run_id:
        with open_dict(cfg):
            cfg.logger.wandb.id = run_id


def train(cfg: DictConfig, callbacks: list[L.Callback] | None = None) -> float | None:
    """Fit (and optionally test) the model of ``cfg``; return ``cfg.optimized_metric``.

    ``ckpt_path`` resumes model, optimiser, scheduler, step and data order from a checkpoint
    (``last``: the newest ``last.ckpt`` of this task's runs), continuing the same W&B run.
    ``callbacks`` join those of ``cfg.callbacks`` (a search's pruning).
    """
    if cfg.get("search"):
        raise ConfigError("hparams_search", "a search preset runs with python -m heartgpt.search "
                          "<the same overrides>, not heartgpt.train")
    L.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision(cfg.float32_matmul_precision)
    ensure_demo_shards(cfg)
    synthetic = mark_synthetic(cfg)
    resolve_initial_weights(cfg)

    datamodule: L.LightningDataModule = instantiate(cfg.data, _convert_="all")
    if cfg.get("overfit_batches"):
        from heartgpt.training.overfit import FixedBatches

        datamodule = FixedBatches(datamodule, cfg.overfit_batches)
    module: L.LightningModule = instantiate(cfg.module, _convert_="all")
    module.hparams["synthetic_data"] = synthetic  # in every checkpoint: eval/predict warn

    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), cfg.paths.output_dir,
                                  Path(cfg.paths.log_dir) / cfg.run_name)
    continue_wandb_run(cfg, ckpt_path)
    loggers: list[Logger] = instantiate_all(cfg.get("logger"))
    callbacks = [*instantiate_all(cfg.get("callbacks")), *(callbacks or [])]
    if cfg.get("freeze") and "_target_" in cfg.freeze:
        callbacks.append(instantiate(cfg.freeze, _convert_="all"))
    if not loggers:  # nothing to log learning rates to (LearningRateMonitor would refuse)
        callbacks = [cb for cb in callbacks if not isinstance(cb, LearningRateMonitor)]
    trainer = start_trainer(cfg, callbacks, loggers)
    apply_batch_plan(cfg, trainer, module)
    for lg in trainer.loggers:
        if isinstance(lg, WandbLogger):
            save_wandb_id(cfg.paths.output_dir, lg.version)
    with closing_wandb(trainer):
        if cfg.get("train"):
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
            if completed_training(trainer):
                mark_finished(cfg.paths.output_dir, {
                    "global_step": trainer.global_step,
                    "last": trainer.checkpoint_callback.last_model_path
                    if trainer.checkpoint_callback else "",
                    "initial_weights": plain_dict(cfg.get("initial_weights"))})
        fit_metrics = dict(trainer.callback_metrics)  # before test replaces them
        metric = fit_metrics.get(cfg.optimized_metric)
        best = tested_checkpoint(cfg, trainer)
        if cfg.get("test"):
            check_weights_to_test(cfg, trained=bool(cfg.get("train")), ckpt=best or ckpt_path,
                                  initial=module.initial_weights())
            results = trainer.test(module, datamodule=datamodule, ckpt_path=best or ckpt_path)
            if trainer.is_global_zero:
                trained = {"trainable_params": sum(p.numel() for p in module.parameters()
                                                   if p.requires_grad)} if cfg.get("train") else {}
                trained.update(test_calibration(cfg, best or ckpt_path))
                write_test_metrics(cfg.paths.output_dir, results, best or ckpt_path, trained)
                log_result_tables(trainer, cfg.paths.output_dir, "test")
        if trainer.checkpoint_callback is not None:
            log_checkpoints(trainer, best, fit_metrics,
                            best or ckpt_path if cfg.get("test") else None,
                            read_test_metrics(cfg.paths.output_dir), cfg.optimized_metric)
            for lg in trainer.loggers:
                lg.log_hyperparams({"checkpoints/best": best,
                                    "checkpoints/last": trainer.checkpoint_callback.last_model_path})
    if synthetic and trainer.is_global_zero:
        log.warning(SYNTHETIC_WARNING, cfg.data.shard_dir)
    if metric is None:
        log.warning("optimized_metric %r was not logged", cfg.optimized_metric)
        return None
    return float(metric)


def test_calibration(cfg: DictConfig, ckpt: str | None) -> dict[str, Any]:
    """``test/ece``, ``test/brier`` (and ``_calibrated`` with the tested checkpoint's
    temperature), ``temperature`` and ``calibration_bins`` for ``test_metrics.json``, and
    ``test_reliability.png`` (classifying heads only; {} otherwise)."""
    from heartgpt.training.calibration_report import checkpoint_temperature, report_files

    bins = int(cfg.calibration_bins)
    temperature = checkpoint_temperature(ckpt)
    metrics = report_files(cfg.paths.output_dir, TEST_PREDICTIONS, "test", temperature, bins,
                           f"test: {Path(ckpt).name if ckpt else cfg.run_name}")
    if not metrics:
        return {}
    return {**{f"test/{k}": v for k, v in metrics.items() if k != "temperature"},
            "temperature": temperature, "calibration_bins": bins}


def tested_checkpoint(cfg: DictConfig, trainer: L.Trainer) -> str:
    """The checkpoint ``test=true`` scores after fitting: the best by ``optimized_metric``
    (``test_checkpoint=best``) or the final one (``last``); "" when there is none."""
    choice = cfg.get("test_checkpoint", "best")
    if choice not in ("best", "last"):
        raise ConfigError("test_checkpoint", f"must be 'best' or 'last', got {choice!r}")
    callback = trainer.checkpoint_callback
    if callback is None:
        return ""
    return callback.best_model_path if choice == "best" else callback.last_model_path


def check_weights_to_test(cfg: DictConfig, trained: bool, ckpt: str | None,
                          initial: str | None) -> None:
    """Refuse to test a randomly initialised model unless ``allow_untrained_test=true``:
    a test-only run (``train=false``) needs ``ckpt_path``, ``module.init_from`` or
    ``module.pretrained``, else its metrics would silently score random weights."""
    if trained or ckpt or initial:
        return
    if cfg.get("allow_untrained_test"):
        log.warning("testing randomly initialised weights (allow_untrained_test=true)")
        return
    raise ConfigError(
        "test", "test=true train=false: nothing names the weights to test, so the metrics would be those "
        "of a random initialisation; give ckpt_path=<our .ckpt>, module.init_from=<weights> "
        "(pre-training) or module.pretrained=<weights> (fine-tuning), or allow_untrained_test=true")


def plain_dict(node: DictConfig | None) -> dict[str, Any]:
    """A config node as a plain dict ({} for None)."""
    return OmegaConf.to_container(node, resolve=True) if node is not None else {}


def completed_training(trainer: L.Trainer) -> bool:
    """Whether ``fit`` ran to its configured end (max_steps / max_epochs), rather than being
    interrupted (Ctrl-C) or stopped early by a callback. (A SIGTERM never gets here:
    :class:`~heartgpt.training.callbacks.Preemption` ends the process after its checkpoint.)"""
    if trainer.interrupted:
        return False
    if trainer.max_steps is not None and trainer.max_steps > 0:
        return trainer.global_step >= trainer.max_steps
    return trainer.max_epochs is not None and trainer.current_epoch >= trainer.max_epochs
