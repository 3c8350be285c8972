"""Scoring a checkpoint on a shard set: the work of ``python -m heartgpt.eval``.

The task's own LightningModule scores (``cfg.module``: its ``test_step`` and torchmetrics), built
with the network of the checkpoint (its :class:`~heartgpt.model.GPTConfig` wins over
``cfg.model``) and holding its weights, after checking that the checkpoint fits the task: the
modality and vocabulary of the data, a language-model head for ``task=pretrain``, a 1-output
head of the same fine-tuned task for ``af`` / ``beats``. ``trainer.test`` then runs over the
DataModule's ``split`` (``all`` by default) with :class:`~heartgpt.data.samplers.EvalSampler`:
each window once over all devices, in the batch it would be in on one, and the sums in float64,
so 1 and N processes give the same metrics (exactly, when the split fills a batch per process).

Writes, beside the run's ``config.yaml``: ``eval_metrics.json``, and for fine-tuned tasks
``eval_predictions.csv`` (a row per window) and for ``beats`` ``eval_beats.csv`` (a row per
detected and per annotated beat); for heads with a per-window metric ``eval_risk_coverage.csv``
and ``.png``: the metric as the least reliable windows are dropped first
(:mod:`heartgpt.training.risk_coverage`, ``risk_coverage:`` in ``conf/eval.yaml``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from heartgpt.files import sha256_file, write_json_atomic
from heartgpt.heads.objectives import BASELINE
from heartgpt.model.checkpoint_format import (
    CheckpointError,
    LoadedModel,
    require_torch,
    warn_if_synthetic,
)
from heartgpt.model.checkpoints import FINETUNED_TASKS, check_vocab, find_weights, load_model
from heartgpt.training.base import plain
from heartgpt.training.mean_baseline import BEATS_MEAN_BASELINE, verdict
from heartgpt.training.result_files import (
    EVAL_BEATS,
    EVAL_CONFUSION,
    EVAL_METRICS,
    EVAL_PREDICTIONS,
    null_undefined,
    read_predictions,
)
from heartgpt.training.risk_coverage import add_risk_coverage
from heartgpt.training.run import (
    INITIAL_WEIGHTS_KEYS,
    closing_wandb,
    ensure_demo_shards,
    instantiate_all,
    start_trainer,
)
from heartgpt.training.wandb_artifacts import log_result_tables

log = logging.getLogger(__name__)
_CARRIED_HPARAMS = ("head",)  # fine-tuning settings a .ckpt knows better than the config


def task_of(cfg: DictConfig) -> str:
    """The task a config scores: ``module.task`` of the fine-tuning tasks, else 'pretrain'."""
    return str(cfg.module.get("task") or "pretrain")


def check_checkpoint(loaded: LoadedModel, cfg: DictConfig) -> None:
    """Refuse, naming the file, a checkpoint that cannot be scored by ``cfg``'s task on its
    data: another modality or vocabulary, the wrong head, another fine-tuned task."""
    source, modality, task = loaded.source, cfg.modality.name, task_of(cfg)
    if loaded.modality is not None and loaded.modality != modality:
        raise CheckpointError(source, f"a {loaded.modality.upper()} checkpoint cannot score "
                              f"{modality.upper()} data (modality={modality}); give "
                              f"modality={loaded.modality} and shards of that modality")
    check_vocab(loaded, cfg.modality.vocab_size, what=f"modality={modality}")
    outputs = loaded.model.config.out_features
    if task == "pretrain" and outputs is not None:
        hint = loaded.task if loaded.task in FINETUNED_TASKS else "af or task=beats"
        raise CheckpointError(source, f"has a {outputs}-output fine-tuned head, not the "
                              f"language-model head task=pretrain scores: use task={hint}")
    wanted = cfg.module.get("head", {}).get("outputs", 1)
    if task != "pretrain" and outputs is None:
        raise CheckpointError(source, f"is a pre-trained language model ({loaded.model.config.n_out}"
                              f"-way head), not a fine-tuned {task} model: fine-tune it "
                              f"first (python -m heartgpt.train task={task} module.pretrained=...)")
    if task != "pretrain" and outputs != wanted:
        raise CheckpointError(source, f"has a {outputs}-output head but module.head.outputs="
                              f"{wanted}: give the head it was trained with")
    if task != "pretrain" and loaded.task in FINETUNED_TASKS and loaded.task != task:
        raise CheckpointError(source, f"is a fine-tuned {loaded.task} model: evaluate it with "
                              f"task={loaded.task}, not task={task}")


def pin_checkpoint(cfg: DictConfig) -> LoadedModel:
    """Load and check ``cfg.checkpoint``; pin it in ``cfg`` (absolute path, sha256) and put its
    network config in ``cfg.model`` (so ``data.block_size`` and ``module.model_config`` follow
    it), and its ``head`` in ``cfg.module`` when it is one of our ``.ckpt`` files."""
    path = find_weights(cfg.checkpoint, cfg.paths.get("weights_dir")).resolve()
    loaded = load_model(path)
    require_torch(loaded, "evaluation")
    hparams = dict(loaded.hparams)  # ({} unless one of our .ckpt files)
    if hparams.get("head") is not None:  # (a checkpoint from before heads were config: its own)
        hparams["head"] = loaded.head
    with open_dict(cfg):
        for key in _CARRIED_HPARAMS:
            if key in hparams and key in cfg.module and hparams[key] != plain(cfg.module[key]):
                log.info("module.%s=%s, as %s was trained", key, hparams[key], path.name)
                cfg.module[key] = hparams[key]
    check_checkpoint(loaded, cfg)
    with open_dict(cfg):
        cfg.checkpoint = str(path)
        cfg.checkpoint_sha256 = sha256_file(path)
        cfg.model = OmegaConf.create(loaded.model.config.to_dict())
    log.info("checkpoint: %s (sha256 %s)", path, cfg.checkpoint_sha256)
    warn_if_synthetic(loaded, log)
    return loaded


def build_module(cfg: DictConfig, loaded: LoadedModel) -> L.LightningModule:
    """The task's LightningModule (``cfg.module``) holding the checkpoint's weights, writing its
    predictions under the evaluation's file names."""
    from heartgpt.training.finetune import FinetuneModule

    no_initial = {key: None for key in INITIAL_WEIGHTS_KEYS if key in cfg.module}
    module = instantiate(cfg.module, _convert_="all", **no_initial)
    module.model.load_state_dict(loaded.model.state_dict(), strict=True)
    if isinstance(module, FinetuneModule):
        module.predictions_file, module.beats_file = EVAL_PREDICTIONS, EVAL_BEATS
        module.confusion_file = EVAL_CONFUSION
        load_head_state(module, loaded)
    return module


def load_head_state(module: L.LightningModule, loaded: LoadedModel) -> None:
    """The task head's own state (attention pooling, a regression head's target mean and std)
    that ``loaded``, one of our ``.ckpt`` files, holds: without it the head would score with
    fresh values."""
    state = module.task_head.state_dict()
    if not state:
        return
    if Path(loaded.source).suffix != ".ckpt":
        raise CheckpointError(loaded.source, f"a {module.task_head.kind} head keeps state of its "
                              f"own ({', '.join(state)}) that only our .ckpt files hold")
    missing = sorted(set(state) - set(loaded.head_state))
    if missing:
        raise CheckpointError(loaded.source, f"has no {', '.join(missing)} for its "
                              f"{module.task_head.kind} head")
    module.task_head.load_state_dict(loaded.head_state, strict=True)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Score ``cfg.checkpoint`` on ``cfg.data``'s ``split``; return what ``eval_metrics.json``
    holds (written by rank 0, with a summary table on the console)."""
    L.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision(cfg.float32_matmul_precision)
    loaded = pin_checkpoint(cfg)
    ensure_demo_shards(cfg)
    datamodule: L.LightningDataModule = instantiate(cfg.data, _convert_="all")
    module = build_module(cfg, loaded)
    trainer = start_trainer(cfg, instantiate_all(cfg.get("callbacks")),
                            instantiate_all(cfg.get("logger")))
    with closing_wandb(trainer):
        results = trainer.test(module, datamodule=datamodule, verbose=False)
        log_result_tables(trainer, cfg.paths.output_dir, "eval")  # W&B tables of the eval files
    report = eval_report(cfg, results[0] if results else {}, trainer.world_size)
    if trainer.is_global_zero:
        add_calibration(report, cfg, loaded)
        add_risk_coverage(report, cfg, loaded)
        _, warning = verdict(report["metrics"])
        if warning:
            log.warning(warning)
        write_json_atomic(Path(cfg.paths.output_dir) / EVAL_METRICS, report)
        print_summary(report, Path(cfg.paths.output_dir))
    return report


def eval_report(cfg: DictConfig, logged: dict[str, float], devices: int) -> dict[str, Any]:
    """What ``eval_metrics.json`` holds: the metrics (``test/`` prefix dropped; one that the
    labels leave undefined, e.g. the AUROC of one class, is null with its reason) and what
    was scored: checkpoint, shards, split, windows, devices, output files; for a regression,
    ``beats_mean_baseline``: whether every column's MAE is below that of always predicting the
    training split's mean (``baseline_mae``)."""
    out = Path(cfg.paths.output_dir)
    metrics = {k.removeprefix("test/"): float(v) for k, v in logged.items()}
    windows = round(metrics.pop("windows", 0.0))
    files = {name: (out / name).is_file() for name in (EVAL_PREDICTIONS, EVAL_BEATS, EVAL_CONFUSION)}
    if files[EVAL_PREDICTIONS]:
        metrics = null_undefined(metrics, read_predictions(out / EVAL_PREDICTIONS))
    data = cfg.data
    beats, _ = verdict(metrics)  # a regression: does it beat predicting the training mean?
    return {
        "task": task_of(cfg), "checkpoint": cfg.checkpoint,
        "checkpoint_sha256": cfg.get("checkpoint_sha256"), "modality": cfg.modality.name,
        "shard_dir": str(Path(data.shard_dir).resolve()), "split": data.get("split", "test"),
        "folds": data.get("folds") if data.get("split") != "all" else None,
        "fold": data.get("fold") if data.get("split") != "all" else None,
        "windows": windows, "devices": devices, "metrics": metrics,
        "files": [name for name, present in files.items() if present],
        **({BEATS_MEAN_BASELINE: beats} if beats is not None else {}),
    }


def add_calibration(report: dict[str, Any], cfg: DictConfig, loaded: LoadedModel) -> None:
    """ECE and Brier score (raw, and scaled by the checkpoint's temperature when it holds
    one) into ``report["metrics"]``, the temperature into ``report``, and the reliability
    diagram ``eval_reliability.png`` beside the predictions (classifying heads only)."""
    from heartgpt.training.calibration_report import RELIABILITY_PNG, report_files

    out = Path(cfg.paths.output_dir)
    temperature = loaded.calibration.temperature if loaded.calibration else None
    metrics = report_files(out, EVAL_PREDICTIONS, "eval", temperature, int(cfg.calibration_bins),
                           f"eval: {Path(cfg.checkpoint).name}")
    if not metrics:
        return
    metrics.pop("temperature", None)
    report["metrics"].update(metrics)
    report["temperature"] = temperature
    report["calibration"] = loaded.calibration.to_dict() if loaded.calibration else None
    report["files"].append(RELIABILITY_PNG["eval"])


def print_summary(report: dict[str, Any], out: Path) -> None:
    """One table of the metrics (a regression's training-mean baseline beside its MAE and
    RMSE), then where the files are."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"eval {report['task']}: {Path(report['checkpoint']).name} on "
                  f"{report['shard_dir']} (split {report['split']}, {report['windows']} windows, "
                  f"{report['devices']} device(s))", markup=False, soft_wrap=True)
    metrics = report["metrics"]
    baselines = {k.removeprefix(BASELINE): v for k, v in metrics.items() if k.startswith(BASELINE)}
    table = Table()
    table.add_column("metric")
    table.add_column("value", justify="right")
    if baselines:
        table.add_column("training mean", justify="right")
    for name, value in metrics.items():
        if name == "undefined" or name.startswith(BASELINE):
            continue
        cells = [name, _number(value)]
        if baselines:
            cells.append(_number(baselines[name]) if name in baselines else "")
        table.add_row(*cells)
    console.print(table)
    if BEATS_MEAN_BASELINE in report:
        console.print("beats always predicting the training mean (MAE): "
                      f"{'yes' if report[BEATS_MEAN_BASELINE] else 'NO'}", markup=False)
    reasons: dict[str, list[str]] = {}
    for name, reason in report["metrics"].get("undefined", {}).items():
        reasons.setdefault(reason, []).append(name)
    for reason, names in reasons.items():
        console.print(f"  {', '.join(names)} {reason}", markup=False, soft_wrap=True)
    rc = report.get("risk_coverage")
    if rc:
        metric, rows = rc["metric"], rc["table"]
        cells = " | ".join(f"{100 * r['coverage']:.0f} % {_number(r[metric])} (random "
                           f"{_number(r.get(metric + '_random'))})" for r in rows)
        console.print(f"risk-coverage ({metric}; least reliable by {rc['order']} dropped first; "
                      f"{rc['flagged']} of {rc['windows']} windows flagged): {cells}",
                      markup=False, soft_wrap=True)
    for name in (EVAL_METRICS, *report["files"]):
        console.print(f"-> {out / name}", markup=False, soft_wrap=True)


def _number(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.4f}"
