"""The training config tree: every option composes, every experiment instantiates, presets fit
the signatures they feed and restate no library default."""

from __future__ import annotations

import inspect
import os
import re

import lightning as L
import pytest
import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from heartgpt.data.shards import ShardError
from heartgpt.model import GPT, GPTConfig
from heartgpt.training.finetune import FinetuneModule
from heartgpt.training.pretrain import PretrainModule
from heartgpt.training.resume import FINISHED_FILE
from training_helpers import CONF_DIR, compose_train

NOT_OURS = {"data", "prepare"}  # the data engineer's groups
NOT_TRAINING = {"hydra", "mode", "trust"}  # predict's groups (tests/test_predict.py composes them)
GROUPS = sorted(p.name for p in CONF_DIR.iterdir()
                if p.is_dir() and p.name not in NOT_OURS | NOT_TRAINING)
# `_name.yaml`: a base the group's options extend (task/_finetune), not an option
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF_DIR / g).glob("*.yaml"))
           if not p.stem.startswith("_")]
EXPERIMENTS = [o for g, o in OPTIONS if g == "experiment"]
# Declared at Lightning's defaults on purpose: overriding them then needs no "+".
# The demo fine-tunes start from the newest demo pre-training, which these tests do not run.
NO_PRETRAINED = {name: ["module.pretrained=null"] for name in (
    "demo_af", "demo_af_lora", "demo_beats", "demo_hr", "demo_rhythm", "demo_hr_tag")}
DECLARED = {"Trainer": {"accelerator", "devices", "strategy", "precision", "num_nodes"},
            "WandbLogger": {"id"}}


@pytest.fixture
def paths(tmp_path):
    return {"data_dir": tmp_path / "data", "output_dir": tmp_path / "run", "log_dir": tmp_path / "logs"}


def test_tree_has_the_expected_options():
    have = set(OPTIONS)
    for group, options in {
        "modality": ["ecg", "ppg"], "model": ["paper", "medium", "large"],
        "task": ["pretrain", "af", "beats", "classify", "regress", "tag"],
        "freeze": ["none", "full", "head", "last_block", "last_n", "gradual"],
        "trainer": ["default", "cpu", "gpu", "ddp", "ddp_cpu", "fsdp"],
        "logger": ["wandb", "csv", "none"], "callbacks": ["default"], "paths": ["default"],
        "debug": ["fast", "overfit"],
        "experiment": ["paper_ecg_pretrain", "paper_ppg_pretrain", "demo", "paper_ecg_af",
                       "paper_ppg_af", "paper_ppg_beats", "demo_af", "demo_beats", "demo_af_lora",
                       "demo_hr", "demo_rhythm", "demo_hr_tag"],
    }.items():
        assert {(group, o) for o in options} <= have, group
    assert (CONF_DIR / "hydra" / "launcher" / "slurm.yaml").is_file()


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_and_resolves(group, option, paths):
    cfg = compose_train([f"{group}={option}", *NO_PRETRAINED.get(option, [])], **paths)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["data"]["modality"] == resolved["modality"]["name"]
    assert resolved["module"]["model_config"]["vocab_size"] == resolved["modality"]["vocab_size"]


def test_default_composition_is_the_demo(paths):
    cfg = compose_train([], **paths)
    assert cfg.run_name == "pretrain_ecg"
    assert cfg.data.shard_dir == f"{paths['data_dir']}/demo/ecg/pretrain"
    assert cfg.trainer.max_steps <= 200 and cfg.trainer.use_distributed_sampler is False
    assert "wandb" in cfg.logger and cfg.logger.wandb.offline is True
    assert cfg.test is True  # the demo split has a test set


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_instantiates(experiment, paths):
    cfg = compose_train([f"experiment={experiment}", *NO_PRETRAINED.get(experiment, [])], **paths)
    datamodule = instantiate(cfg.data, _convert_="all")
    module = instantiate(cfg.module, _convert_="all")
    callbacks = [instantiate(c, _convert_="all") for c in cfg.callbacks.values()]
    loggers = [instantiate(c, _convert_="all") for c in cfg.logger.values()]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers, _convert_="all")
    assert isinstance(datamodule, L.LightningDataModule)
    assert isinstance(module, PretrainModule if cfg.run_name.startswith(("pretrain", "paper_ecg_pre",
                                                                        "paper_ppg_pre"))
                      else FinetuneModule)
    assert isinstance(trainer, L.Trainer)
    assert module.hparams.modality == cfg.modality.name


# ../shared/PAPER.md, as facts: what each paper preset must compose to.
PRETRAIN = dict(global_batch=64, lr=3e-4, betas=[0.9, 0.999], weight_decay=0.01, decay="all",
                schedule="constant", clip=None, precision="32-true", matmul="highest",
                dropout=0.2, val_every=2000, val_batches=200, test="best", replacement=True)
FINETUNE = dict(global_batch=128, lr=3e-4, betas=[0.9, 0.999], weight_decay=0.01, decay="all",
                schedule="constant", clip=None, precision="32-true", matmul="highest",
                dropout=0.2, freeze="last_block", test="last", replacement=True)
PAPER = {
    "paper_ecg_pretrain": dict(PRETRAIN, modality="ecg", steps=560_000),
    "paper_ppg_pretrain": dict(PRETRAIN, modality="ppg", steps=500_000),
    "paper_ecg_af": dict(FINETUNE, modality="ecg", steps=1000, weights="ECGPT_560k_iters.zip",
                         folds="loso", val_fraction=0.0, head="sequence"),
    "paper_ppg_af": dict(FINETUNE, modality="ppg", steps=1000, weights="PPGPT_500k_iters.zip",
                         folds="loso", val_fraction=0.0, head="sequence"),
    "paper_ppg_beats": dict(FINETUNE, modality="ppg", steps=5000, weights="PPGPT_500k_iters.zip",
                            folds=None, head="token"),
}


@pytest.mark.parametrize("experiment", sorted(PAPER))
def test_paper_presets_compose_to_the_paper_recipe(experiment, paths):
    fact = PAPER[experiment]
    cfg = compose_train([f"experiment={experiment}"], **paths)
    assert cfg.modality.name == fact["modality"]
    assert cfg.data.global_batch_size == fact["global_batch"]  # on any number of devices
    assert cfg.module.lr == fact["lr"] and list(cfg.module.betas) == fact["betas"]
    assert cfg.module.weight_decay == fact["weight_decay"]
    assert cfg.module.decay_params == fact["decay"]
    constant = cfg.module.warmup_steps == 0 and cfg.module.min_lr_ratio == 1.0
    assert constant == (fact["schedule"] == "constant")
    assert cfg.trainer.gradient_clip_val == fact["clip"]
    assert cfg.trainer.precision == fact["precision"]
    assert cfg.float32_matmul_precision == fact["matmul"]
    assert cfg.trainer.max_steps == fact["steps"]
    assert GPTConfig.from_dict(cfg.module.model_config) == GPTConfig(
        vocab_size=cfg.modality.vocab_size, dropout=fact["dropout"])  # the released architecture
    assert cfg.test_checkpoint == fact["test"]
    assert cfg.data.with_replacement == fact["replacement"]
    if experiment.endswith("pretrain"):
        assert cfg.trainer.val_check_interval == fact["val_every"]
        assert cfg.trainer.limit_val_batches == fact["val_batches"]
        return
    assert cfg.freeze.strategy == fact["freeze"] and cfg.test
    assert cfg.module.pretrained.endswith(f"/{fact['weights']}")
    assert cfg.data.folds == fact["folds"]
    assert cfg.data.label_kind == fact["head"]
    assert cfg.module.head.kind == {"sequence": "classify", "token": "tag"}[fact["head"]]
    assert cfg.callbacks.model_checkpoint.monitor is None  # the final model is tested
    if fact["folds"] == "loso":  # every other subject trains
        assert cfg.data.val_fraction == fact["val_fraction"]


def test_the_ppg_preset_needs_segments_longer_than_the_papers_ten_seconds(tmp_path, paths):
    """A 500-token context with next-token targets reads 501 tokens: 10 s of PPG at 50 Hz (500
    samples) cannot serve it, so the preset's shards are 20-s segments."""
    from hydra.utils import instantiate

    from heartgpt.data.demo import build_demo

    cfg = compose_train(["experiment=paper_ppg_pretrain"], **paths)
    for samples, ok in ((500, False), (1000, True)):
        shard_dir = tmp_path / str(samples)
        build_demo(shard_dir, "ppg", subjects=2, seconds=40, seed=0, pretrain_samples=samples,
                   finetune_samples=500, finetune_stride=500, beat_tolerance=0, rows_per_shard=64)
        with open_dict(cfg):
            cfg.data.shard_dir = str(shard_dir / "pretrain")
        dm = instantiate(cfg.data, _convert_="all")
        if ok:
            dm.setup("fit")
        else:
            with pytest.raises(ShardError, match="block_size \\+ 1"):
                dm.setup("fit")


def test_model_presets_are_gpt_configs(paths):
    sizes = {}
    for option in ("paper", "medium", "large"):
        cfg = compose_train([f"model={option}"], **paths)
        config = GPTConfig.from_dict(OmegaConf.to_container(cfg.model, resolve=True))
        sizes[option] = GPT(config).num_params()
    assert 0.4e6 < sizes["paper"] < 0.5e6  # ~0.44 M as released
    assert sizes["paper"] < sizes["medium"] < sizes["large"]
    paper = compose_train(["model=paper"], **paths).model
    assert paper.attn_scale == paper.n_embd**-0.5 and paper.dropout == 0.2


@pytest.mark.parametrize(("task", "module"), [("pretrain", PretrainModule), ("af", FinetuneModule),
                                              ("beats", FinetuneModule),
                                              ("classify", FinetuneModule),
                                              ("regress", FinetuneModule), ("tag", FinetuneModule)])
def test_task_preset_matches_the_module_signature(task, module, paths):
    cfg = compose_train([f"task={task}"], **paths)
    params = inspect.signature(module.__init__).parameters
    keys = set(cfg.module) - {"_target_"}
    assert keys <= set(params), keys - set(params)
    required = {n for n, p in params.items() if n != "self" and p.default is inspect.Parameter.empty}
    assert required <= keys
    for name in keys & set(params):  # code defaults, where there are any, equal the YAML
        if params[name].default is not inspect.Parameter.empty:
            assert params[name].default == cfg.module[name], name


def _restated_defaults(node: DictConfig) -> list[str]:
    cls = get_class(node._target_)
    params = inspect.signature(cls.__init__).parameters
    allowed = DECLARED.get(cls.__name__, set())
    out = []
    for key, value in node.items():
        p = params.get(str(key))
        if key == "_target_" or p is None or key in allowed or isinstance(value, DictConfig):
            continue
        if p.default is not inspect.Parameter.empty and p.default == value:
            out.append(f"{cls.__name__}.{key}={value}")
    return out


@pytest.mark.parametrize("overrides", [["logger=csv"], ["logger=wandb"], ["trainer=ddp_cpu"],
                                       ["trainer=fsdp"], ["trainer=gpu"]])
def test_no_library_default_restated(overrides, paths):
    cfg = compose_train(overrides, **paths)
    nodes = [cfg.trainer, *cfg.callbacks.values(), *cfg.logger.values()]
    restated = [r for n in nodes for r in _restated_defaults(n)]
    assert not restated, restated


def test_distributed_and_precision_are_plain_overrides(paths):
    cfg = compose_train(["trainer.devices=4", "trainer.strategy=fsdp", "trainer.precision=bf16-mixed",
                         "trainer.num_nodes=2"], **paths)
    assert (cfg.trainer.devices, cfg.trainer.strategy, cfg.trainer.precision) == (4, "fsdp", "bf16-mixed")
    fsdp = compose_train(["trainer=fsdp"], **paths).trainer.strategy
    assert type(instantiate(fsdp)).__name__ == "FSDPStrategy"
    assert compose_train(["trainer=ddp_cpu"], **paths).trainer.use_distributed_sampler is False


def test_hydra_interpolations_only_in_paths():
    offenders = [str(p.relative_to(CONF_DIR)) for p in CONF_DIR.rglob("*.yaml")
                 if p.parent.name not in NOT_OURS and p.name != "prepare.yaml"
                 and p.parent != CONF_DIR / "paths" and re.search(r"\$\{hydra:", p.read_text())]
    assert not offenders


def test_slurm_launcher_composes(paths):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4",
                                          "trainer.num_nodes=2"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 4, 4)


def test_debug_presets(paths):
    fast = compose_train(["debug=fast"], **paths)
    assert fast.trainer.max_steps < 20 and "csv" in fast.logger and fast.data.num_workers == 0
    overfit = compose_train(["debug=overfit"], **paths)
    assert overfit.overfit_batches == 1 and overfit.model.dropout == 0.0


def test_beat_metrics_find_peaks_as_detect_beats_does(paths):
    """Validation F1 picks checkpoints by the same peaks the inference tool reports."""
    from heartgpt.inference.beat_detection import PEAK_DISTANCE, PEAK_HEIGHT, PEAK_WIDTH

    cfg = compose_train(["experiment=demo_beats"], **paths)
    rate = cfg.modality.sample_rate
    assert cfg.module.beats.peak_height == PEAK_HEIGHT
    assert round(cfg.module.beats.peak_distance_ms * rate / 1000) == PEAK_DISTANCE
    assert (None, round(cfg.module.beats.peak_max_width_ms * rate / 1000)) == PEAK_WIDTH


@pytest.mark.parametrize(("experiment", "runs", "make_it"), [
    ("demo_af", "pretrain_long_ecg", "experiment=demo_long modality=ecg"),
    ("demo_beats", "pretrain_ppg", "modality=ppg"),
])
def test_demo_finetune_starts_from_the_newest_finished_pretraining(paths, experiment, runs, make_it):
    cfg = compose_train([f"experiment={experiment}"], **paths)
    with pytest.raises(Exception, match=f"no finished run under .*{runs}: .*heartgpt.train {make_it}`"):
        _ = cfg.module.pretrained
    older, newer, killed = (paths["log_dir"] / runs / "runs" / name / "checkpoints" / "last.ckpt"
                            for name in ("a", "b", "c"))
    for i, path in enumerate((older, newer, killed)):
        path.parent.mkdir(parents=True)
        torch.save({"global_step": i}, path)  # a whole file: an empty one is passed over
        os.utime(path, (1_000_000 + i, 1_000_000 + i))
    with pytest.raises(Exception, match=f"no run under .*{runs} finished .*c stopped part-way"):
        _ = cfg.module.pretrained  # no finished.json anywhere: nothing is taken
    for path in (older, newer):
        (path.parent.parent / FINISHED_FILE).write_text("{}")
    assert cfg.module.pretrained == str(newer)  # the killed run "c" is newer but did not finish


def test_demo_af_fine_tunes_as_demo_long_pre_trained(paths):
    """The frozen layers keep demo_long's dropout, so their features are the ones it learnt."""
    long = compose_train(["experiment=demo_long"], **paths)
    af = compose_train(["experiment=demo_af"], **paths)
    assert long.run_name == "pretrain_long_ecg" and long.module._target_.endswith("PretrainModule")
    assert af.model.dropout == long.model.dropout


def test_freeze_sweep_composes_one_callback_per_strategy(paths):
    from heartgpt.training.callbacks import Freeze, GradualUnfreeze

    for strategy in ("full", "head", "last_block", "last_n", "gradual"):
        cfg = compose_train(["experiment=demo_af", "module.pretrained=null", f"freeze={strategy}"], **paths)
        callback = instantiate(cfg.freeze)
        assert isinstance(callback, GradualUnfreeze if strategy == "gradual" else Freeze)
    assert "_target_" not in compose_train([], **paths).freeze  # pre-training freezes nothing


@pytest.mark.parametrize(("task", "metric", "steps"), [("af", "val/auroc", 1000),
                                                       ("beats", "val/beat_f1", 5000)])
def test_task_settings_win_over_the_groups_they_adjust(task, metric, steps, paths):
    """A task's trainer and checkpoint settings are not undone by the groups listed after it."""
    cfg = compose_train(["~experiment", f"task={task}"], **paths)
    assert cfg.optimized_metric == cfg.callbacks.model_checkpoint.monitor == metric
    assert cfg.callbacks.model_checkpoint.mode == "max"  # a higher AUROC / F1 is better
    assert cfg.trainer.max_steps == steps
