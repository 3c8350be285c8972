"""Fine-tuning end to end: FinetuneModule through ``heartgpt.train`` with the freeze configs, from
the released checkpoints and from ours, and subject-wise cross-validation."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from heartgpt.compare import compare, markdown
from heartgpt.cv import run_cv, summarize
from heartgpt.data.demo import build_demo
from heartgpt.model.checkpoint_format import CheckpointError
from heartgpt.model.checkpoints import load_model
from heartgpt.training.finetune import FinetuneModule
from heartgpt.training.run import train
from training_helpers import (
    TINY_MODEL,
    compose_train,
    read_metrics_csv,
    run_module,
    wandb_history,
)

# Every window of a test split of 3 of the 6 demo subjects (stratified: AF-like and sinus), so a
# test AUROC is defined (one class gives null, see test_loso_folds_...).
BOTH_CLASSES_TESTED = ["data.test_fraction=0.5", "trainer.limit_test_batches=1.0"]
FAST = ["debug=fast", "logger=csv", "callbacks.progress.mode=log",
        "callbacks.rich_model_summary=null", "data.global_batch_size=4"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """SYNTHETIC demo shards with 500-sample fine-tuning windows (the released context)."""
    root = tmp_path_factory.mktemp("data")
    for modality in ("ecg", "ppg"):
        build_demo(root / "demo" / modality, modality, subjects=6, seconds=40, seed=0,
                   pretrain_samples=501, finetune_samples=500, finetune_stride=250,
                   beat_tolerance=0, rows_per_shard=64)
    return root


def run(overrides: list[str], data_dir: Path, out: Path) -> tuple[float | None, Path]:
    cfg = compose_train([*FAST, *overrides], data_dir=data_dir, output_dir=out,
                        log_dir=out.parent / "logs")
    return train(cfg), out


def trainable_logged(out: Path) -> int:
    rows = [r for r in read_metrics_csv(out) if r.get("trainable_params")]
    return int(float(rows[0]["trainable_params"]))


@pytest.mark.shared
@pytest.mark.slow
@pytest.mark.parametrize(("modality", "task", "base"), [
    ("ecg", "af", "ECGPT_560k_iters.zip"),
    ("ppg", "af", "PPGPT_500k_iters.zip"),
    ("ppg", "beats", "PPGPT_500k_iters.zip"),
])
def test_finetune_from_released_checkpoint(modality, task, base, weights_dir, data_dir, tmp_path):
    """The paper's recipe from the released files: only head, ln_f and block 7 move."""
    released = load_model(weights_dir / base).model.state_dict()
    metric, out = run([f"task={task}", f"modality={modality}", f"module.pretrained={weights_dir / base}",
                       "trainer.max_steps=3", "test=true", *BOTH_CLASSES_TESTED], data_dir, tmp_path / "run")
    assert metric is not None
    tuned = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert trainable_logged(out) == 49_985
    moved = {k.removeprefix("model.") for k, v in tuned.items() if k.startswith("model.")
             and (k.removeprefix("model.") not in released or v.shape != released[k[6:]].shape
                  or not torch.equal(v, released[k[6:]]))}
    assert moved and all(k.startswith(("head.", "ln_f.", "blocks.7.")) for k in moved), moved
    assert any(k.startswith("blocks.7.") for k in moved)
    test_metrics = json.loads((out / "test_metrics.json").read_text())
    key = "test/auroc" if task == "af" else "test/beat_f1"
    assert 0.0 <= test_metrics[key] <= 1.0
    with open(out / "test_predictions.csv") as f:
        predictions = list(csv.DictReader(f))
    assert predictions
    if task == "af":  # the test split holds both classes, so its AUROC is defined
        assert {r["label"] for r in predictions} == {"0", "1"}
    # the fine-tuned checkpoint loads as a task model of the right modality
    loaded = load_model(out / "checkpoints" / "last.ckpt")
    assert (loaded.modality, loaded.task, loaded.model.config.n_out) == (modality, task, 1)


@pytest.mark.shared
def test_wrong_modality_checkpoint_fails_before_training(weights_dir, data_dir, tmp_path):
    with pytest.raises(CheckpointError, match=r"ECGPT_560k_iters\.zip.*(ECG|vocab)"):
        run(["task=af", "modality=ppg", f"module.pretrained={weights_dir / 'ECGPT_560k_iters.zip'}"],
            data_dir, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.shared
def test_bare_released_name_is_found_in_weights_dir_and_recorded(weights_dir, data_dir, tmp_path,
                                                                monkeypatch):
    """``module.pretrained=PPGPT_500k_iters.zip`` is looked up in ``paths.weights_dir`` (set once by
    $HEARTGPT_WEIGHTS); the run's config.yaml and its checkpoints say which file, by sha256."""
    from heartgpt.files import sha256_file

    monkeypatch.chdir(tmp_path)  # nothing named so here: only the weights folder has it
    monkeypatch.delenv("HEARTGPT_WEIGHTS", raising=False)
    with pytest.raises(FileNotFoundError, match=r"PPGPT_500k_iters\.zip: no such checkpoint file "
                       r"\(looked in: .*nowhere/PPGPT_500k_iters\.zip"):
        run(["task=af", "modality=ppg", "module.pretrained=PPGPT_500k_iters.zip",
             f"paths.weights_dir={tmp_path / 'nowhere'}"], data_dir, tmp_path / "missing")
    monkeypatch.setenv("HEARTGPT_WEIGHTS", str(weights_dir))
    _, out = run(["task=af", "modality=ppg", "module.pretrained=PPGPT_500k_iters.zip",
                  "trainer.max_steps=1"], data_dir, tmp_path / "run")
    released = weights_dir / "PPGPT_500k_iters.zip"
    digest = sha256_file(released)
    resolved = OmegaConf.load(out / "config.yaml")
    assert resolved.module.pretrained == str(released.resolve())
    assert resolved.initial_weights.sha256 == digest
    hparams = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["hyper_parameters"]
    assert hparams["initial_weights"] == {"path": str(released.resolve()), "sha256": digest}
    assert json.loads((out / "finished.json").read_text())["initial_weights"]["sha256"] == digest


@pytest.mark.shared
def test_test_only_run_scores_the_named_weights(weights_dir, data_dir, tmp_path):
    """``train=false test=true module.init_from=<released>``: the released model's loss on the test
    windows (as GPT.forward gives it), never the random init's ln(vocab)."""
    import torch.nn.functional as F
    from hydra.utils import instantiate

    released = weights_dir / "ECGPT_560k_iters.zip"
    over = ["experiment=paper_ecg_pretrain", "train=false", "test=true", f"module.init_from={released}",
            "data.shard_dir=${paths.data_dir}/demo/ecg/pretrain", "data.test_fraction=0.3"]
    _, out = run(over, data_dir, tmp_path / "run")
    reported = json.loads((out / "test_metrics.json").read_text())["test/loss"]

    cfg = compose_train([*FAST, *over], data_dir=data_dir, output_dir=tmp_path / "direct")
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.prepare_data()
    datamodule.setup("test")
    model = load_model(released).model
    losses = []
    with torch.no_grad():
        for i, (x, y) in enumerate(datamodule.test_dataloader()):
            if i == cfg.trainer.limit_test_batches:
                break
            losses.append(F.cross_entropy(model(x).flatten(0, 1), y.flatten()))
    assert reported == pytest.approx(float(torch.stack(losses).mean()), abs=1e-5)
    assert reported < 3.0  # ln(101) = 4.62 is what random weights score


def test_test_only_run_without_weights_is_refused(data_dir, tmp_path):
    over = [*TINY_MODEL, "model.block_size=500", "train=false", "test=true",
            "data.shard_dir=${paths.data_dir}/demo/ecg/pretrain", "data.test_fraction=0.3"]
    with pytest.raises(ValueError, match="nothing names the weights to test.*allow_untrained_test"):
        run(over, data_dir, tmp_path / "run")
    run([*over, "allow_untrained_test=true"], data_dir, tmp_path / "explicit")  # said so: runs


@pytest.mark.shared
@pytest.mark.parametrize("name", ["ECGPT_560k_iters.zip"])
def test_ckpt_path_of_released_weights_points_to_init_from(name, weights_dir, data_dir, tmp_path):
    with pytest.raises(ValueError, match=r"ckpt_path=.*resumes the training state.*module\.init_from"):
        run([f"ckpt_path={weights_dir / name}"], data_dir, tmp_path / "run")


def test_vocab_mismatch_of_our_checkpoint_is_a_clear_error(data_dir, tmp_path):
    """An ECG pre-training checkpoint (vocab 101) cannot start a PPG fine-tune (vocab 102)."""
    run([*TINY_MODEL, "model.block_size=500", "trainer.max_steps=1", "task=pretrain",
         "data.shard_dir=${paths.data_dir}/demo/ecg/pretrain"], data_dir, tmp_path / "pre")
    ckpt = tmp_path / "pre" / "checkpoints" / "last.ckpt"
    with pytest.raises(CheckpointError, match=f"{ckpt.name}"):
        run([*TINY_MODEL, "model.block_size=500", "task=af", "modality=ppg", f"module.pretrained={ckpt}"],
            data_dir, tmp_path / "run")


def test_frozen_parameters_get_no_optimizer_state(data_dir, tmp_path):
    run([*TINY_MODEL, "model.block_size=500", "task=af", "freeze=head", "trainer.max_steps=2"],
        data_dir, tmp_path / "run")
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    state = ckpt["optimizer_states"][0]["state"]
    head_params = 2  # head.weight, head.bias
    assert len(state) == head_params
    assert trainable_logged(tmp_path / "run") == 32 + 1  # Linear(32 -> 1)


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_sequence_head_pools_the_chosen_positions(pooling):
    module = FinetuneModule(
        model_config={"vocab_size": 101, "block_size": 16, "n_embd": 16, "n_head": 2, "n_layer": 1,
                      "dropout": 0.0},
        modality="ecg", task="af", head={"kind": "classify", "outputs": 1, "pooling": pooling},
        pretrained=None, lr=1e-3, betas=[0.9, 0.95], weight_decay=0.1, warmup_steps=0,
        lr_decay_steps=10, min_lr_ratio=0.1, beats=None, seed=0)
    x = torch.randint(0, 101, (3, 16))
    per_position = module.model(x)[..., 0]  # (3, 16)
    want = per_position[:, -1] if pooling == "last" else per_position.mean(1)
    torch.testing.assert_close(module(x)[:, 0], want)
    assert module.model.config.n_out == 1


def test_beats_task_logs_beat_level_scores(data_dir, tmp_path):
    run([*TINY_MODEL, "model.block_size=500", "task=beats", "modality=ppg", "trainer.max_steps=2",
         "trainer.val_check_interval=2",
         "test=true"], data_dir, tmp_path / "run")
    rows = read_metrics_csv(tmp_path / "run")
    names = set().union(*(r for r in rows if any(r.values())))
    assert {"val/beat_f1", "val/beat_precision", "val/beat_recall", "val/auroc", "test/beat_f1"} <= {
        n for n in names if any(r.get(n) for r in rows)}


@pytest.mark.slow
def test_loso_folds_of_one_class_report_auroc_as_undefined(data_dir, tmp_path):
    """Leave-one-subject-out: each fold holds one subject, so one class; its AUROC is null with
    the reason (never torchmetrics' 0), is not averaged, and the pooled AUROC is the headline."""
    cfg = compose_train([*FAST, *TINY_MODEL, "model.block_size=500", "task=af", "data.folds=loso",
                         "trainer.max_steps=1"], data_dir=data_dir, output_dir=tmp_path / "unused",
                        log_dir=tmp_path / "logs")
    summary = run_cv(cfg, tmp_path / "cv")
    assert summary["n_folds"] == 6
    for fold in summary["folds"]:
        assert fold["test/auroc"] is None
        assert fold["undefined"]["test/auroc"].startswith("undefined: no ")
    assert "test/auroc" not in summary["mean"] and summary["mean"]["test/acc"] >= 0.0
    assert 0.0 <= summary["pooled"]["auroc"] <= 1.0
    saved = json.loads((tmp_path / "cv" / "summary.json").read_text())
    assert [f["test/auroc"] for f in saved["folds"]] == [None] * 6
    fold = json.loads((tmp_path / "cv" / "fold_0" / "test_metrics.json").read_text())
    assert fold["test/auroc"] is None and "test/auroc" in fold["undefined"]  # the run's own report


@pytest.mark.slow
def test_cross_validation_pools_every_held_out_subject_once(data_dir, tmp_path):
    cfg = compose_train([*FAST, *TINY_MODEL, "model.block_size=500", "task=af", "data.folds=3",
                         "trainer.max_steps=2"], data_dir=data_dir, output_dir=tmp_path / "unused",
                        log_dir=tmp_path / "logs")
    summary = run_cv(cfg, tmp_path / "cv")
    assert summary["n_folds"] == 3
    held_out = [s for fold in summary["folds"] for s in fold["test_subjects"]]
    assert len(held_out) == len(set(held_out)) == 6  # every subject tested once, in one fold
    for fold in summary["folds"]:
        split = json.loads((tmp_path / "cv" / f"fold_{fold['fold']}" / "test_metrics.json").read_text())
        assert "test/auroc" in split and "test/auroc" in fold
    assert 0.0 <= summary["pooled"]["auroc"] <= 1.0
    assert summary["pooled"]["windows"] == sum(f["windows"] for f in summary["folds"])
    assert summarize(tmp_path / "cv") == summary  # re-pooling the finished folds is the same
    assert (tmp_path / "cv" / "folds.csv").is_file()


@pytest.mark.slow
def test_freeze_multirun_writes_one_run_per_strategy(data_dir, tmp_path):
    """`-m task=af freeze=head,last_block,full`: three runs, metrics in W&B offline and CSV,
    where a user's land (no sweep folder given): ``outputs/af_ecg/multiruns/<time>/<job>``."""
    result = run_module(["-m", "task=af", "freeze=head,last_block,full", *FAST, *TINY_MODEL,
                         "model.block_size=500", "trainer.max_steps=2", "trainer.val_check_interval=2",
                         "test=true", "logger=[wandb,csv]", "callbacks.attention_maps=null",
                         *BOTH_CLASSES_TESTED, f"paths.data_dir={data_dir}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    (sweep,) = (tmp_path / "outputs" / "af_ecg" / "multiruns").iterdir()
    trainable = {}
    for job, strategy in enumerate(("head", "last_block", "full")):
        run = sweep / str(job)
        assert f"freeze={strategy}" in (run / ".hydra" / "overrides.yaml").read_text()
        trainable[strategy] = trainable_logged(run)
        assert any(r.get("val/auroc") for r in read_metrics_csv(run))
        (wandb_run,) = (run / "wandb").glob("offline-run-*")
        history = wandb_history(next(wandb_run.glob("run-*.wandb")))
        assert any("val/auroc" in h for h in history) and any("test/auroc" in h for h in history)
        assert "test/auroc" in json.loads((run / "test_metrics.json").read_text())
    assert trainable["head"] < trainable["last_block"] < trainable["full"]
    rows = compare(sweep)
    assert [r["freeze"] for r in rows] == ["head", "last_block", "full"]
    header = markdown(rows).splitlines()[0]
    assert header.startswith("| run | freeze | ") and "test/auroc" in header  # only freeze varies
    assert all(isinstance(r["test/auroc"], float) for r in rows)
    assert (sweep / "comparison.csv").is_file()
