"""Fine-tuning for any target, end to end on the targets demo (tiny): the demo's labels reach
the shards through labels_csv, and task=regress / classify (3 classes) / tag (a value every
2 s) train, test, store what their numbers depend on, and score the same when evaluated."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from heartgpt.data.datamodules import FinetuneDataModule
from heartgpt.data.shards import read_shards
from heartgpt.eval import evaluate
from heartgpt.training.run import train
from training_helpers import FAST, TINY_MODEL, compose_eval, compose_train, run_module

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("task_heads")]

SUBJECTS, RECORDS = 12, 2
TINY_500 = [*FAST, *TINY_MODEL, "model.block_size=500", "module.pretrained=null", "test=true",
            "trainer.max_steps=4", "trainer.limit_test_batches=null", "data.val_fraction=0.2",
            "data.test_fraction=0.3"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """``make data``'s targets demo for ECG, tiny: the recordings, labels.csv and sidecars, and
    the hr / rhythm / hr_tag shard sets prepared from them."""
    root = tmp_path_factory.mktemp("targets")
    done = run_module(["source=demo", "demo.sets=[targets]", "demo.modalities=[ecg]",
                       f"demo.target_subjects={SUBJECTS}", f"demo.target_records={RECORDS}",
                       f"paths.data_dir={root}"], cwd=root, module="heartgpt.prepare")
    assert done.returncode == 0, done.stderr
    return root


def _labels_csv(data_dir: Path) -> dict[str, dict[str, str]]:
    with open(data_dir / "demo" / "ecg" / "recordings" / "labels.csv", newline="") as f:
        return {row["record"]: row for row in csv.DictReader(f)}


def test_the_demo_targets_reach_the_shards_through_labels_csv(data_dir):
    demo, labels = data_dir / "demo" / "ecg", _labels_csv(data_dir)
    assert len(labels) == SUBJECTS * RECORDS
    assert {row["rhythm"] for row in labels.values()} == {"sinus", "af", "ectopic"}
    hr = read_shards(demo / "hr")
    assert hr.meta.synthetic and hr.meta.label_schema.kind == "value"
    for record, value in zip(hr.record, hr.label, strict=True):
        assert value == pytest.approx(float(labels[record]["hr_bpm"]), abs=1e-3)
    rhythm = read_shards(demo / "rhythm")
    classes = rhythm.meta.label_schema.classes
    assert classes == ("sinus", "af", "ectopic")
    for record, index in zip(rhythm.record, rhythm.label, strict=True):
        assert classes[int(index)] == labels[record]["rhythm"]
    tag = read_shards(demo / "hr_tag")
    assert tag.meta.label_schema.stride == 200 and tag.targets.shape[1] == 2  # 5 s: 2 whole 2 s
    for record, targets in zip(tag.record, tag.targets, strict=True):
        with open(demo / "recordings" / f"{record}_hr.csv") as f:
            values = [float(v) if v.strip() else np.nan for v in f.read().split("\n")[1:3]]
        np.testing.assert_allclose(targets, values, atol=1e-3)


def _train(data_dir: Path, out: Path, *overrides: str) -> dict:
    cfg = compose_train([*TINY_500, *overrides], data_dir=data_dir, output_dir=out,
                        log_dir=out.parent / "logs")
    train(cfg)
    return json.loads((out / "test_metrics.json").read_text())


def _evaluate(data_dir: Path, out: Path, checkpoint: Path, *overrides: str) -> dict:
    cfg = compose_eval([f"checkpoint={checkpoint}", "data.split=test", "logger=none",
                        "data.val_fraction=0.2", "data.test_fraction=0.3", *overrides],
                       data_dir=data_dir, output_dir=out, log_dir=out.parent / "logs")
    return evaluate(cfg)


def test_regression_standardises_by_the_training_split_and_evaluates_the_same(data_dir, tmp_path):
    shards = data_dir / "demo" / "ecg" / "hr"
    metrics = _train(data_dir, tmp_path / "run", "task=regress", f"data.shard_dir={shards}")
    assert {"test/mae", "test/rmse", "test/r2", "test/pearson"} <= set(metrics)
    ckpt = Path(metrics["checkpoint"])
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    dm = FinetuneDataModule(str(shards), "ecg", block_size=500, label_kind="sequence",
                            global_batch_size=8, seed=42, val_fraction=0.2, test_fraction=0.3)
    mean, std = dm.label_statistics("train")
    assert state["task_head.objective.mean"].item() == pytest.approx(mean[0], rel=1e-6)
    assert state["task_head.objective.std"].item() == pytest.approx(std[0], rel=1e-6)
    # predictions are in bpm, the labels' units
    with open(tmp_path / "run" / "test_predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {"hr_bpm", "predicted_hr_bpm"} <= set(rows[0])
    mae = np.mean([abs(float(r["hr_bpm"]) - float(r["predicted_hr_bpm"])) for r in rows])
    assert metrics["test/mae"] == pytest.approx(mae, rel=1e-5)
    # evaluating the checkpoint on the same test split scores it with its own statistics
    report = _evaluate(data_dir, tmp_path / "eval", ckpt, "task=regress",
                       f"data.shard_dir={shards}")
    assert report["metrics"]["mae"] == pytest.approx(metrics["test/mae"], rel=1e-5)


def test_three_rhythm_classes_train_with_multiclass_metrics(data_dir, tmp_path):
    shards = data_dir / "demo" / "ecg" / "rhythm"
    metrics = _train(data_dir, tmp_path / "run", "task=classify", "module.head.outputs=3",
                     "module.head.pooling=attention", f"data.shard_dir={shards}")
    assert {"test/auroc", "test/acc", "test/balanced_acc", "test/f1"} <= set(metrics)
    with open(tmp_path / "run" / "test_confusion_matrix.csv", newline="") as f:
        table = list(csv.reader(f))
    assert table[0][1:] == ["sinus", "af", "ectopic"] and [r[0] for r in table[1:]] == table[0][1:]
    with open(tmp_path / "run" / "test_predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sum(int(c) for r in table[1:] for c in r[1:]) == len(rows)
    probs = np.array([[float(r[f"prob_{k}"]) for k in range(3)] for r in rows])
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    # the attention pooling's scorer is the checkpoint's, and evaluation uses it
    state = torch.load(metrics["checkpoint"], weights_only=True)["state_dict"]
    assert "task_head.reduction.score.weight" in state
    report = _evaluate(data_dir, tmp_path / "eval", Path(metrics["checkpoint"]), "task=classify",
                       "module.head.outputs=3", f"data.shard_dir={shards}")
    assert report["metrics"]["auroc"] == pytest.approx(metrics["test/auroc"], abs=1e-6)
    assert "eval_confusion_matrix.csv" in report["files"]
    with open(tmp_path / "eval" / "eval_predictions.csv", newline="") as f:
        scored = {r["row"]: r for r in csv.DictReader(f)}
    for r in rows:  # the same probabilities, window by window: the trained scorer, not a fresh one
        for k in range(3):
            assert float(scored[r["row"]][f"prob_{k}"]) == pytest.approx(float(r[f"prob_{k}"]),
                                                                       abs=2e-6)


def test_heart_rate_every_two_seconds_is_tagging_at_a_stride(data_dir, tmp_path):
    shards = data_dir / "demo" / "ecg" / "hr_tag"
    metrics = _train(data_dir, tmp_path / "run", "task=tag", "module.head.stride=200",
                     f"data.shard_dir={shards}")
    assert {"test/mae", "test/rmse"} <= set(metrics)
    with open(tmp_path / "run" / "test_predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {"positions", "mae"} <= set(rows[0])


@pytest.mark.parametrize(("shard_set", "overrides", "why"), [
    ("hr", ["task=classify", "module.head.outputs=3"],
     "the head predicts classes; the shards hold hr_bpm: values"),
    ("rhythm", ["task=classify"], "a 1-output head is binary: the shards must hold 2 classes"),
    ("hr_tag", ["task=tag", "module.head.stride=100"], "the head tags every 100 tokens"),
])
def test_a_head_and_shards_that_disagree_stop_before_training(data_dir, tmp_path, shard_set,
                                                                overrides, why):
    shards = data_dir / "demo" / "ecg" / shard_set
    with pytest.raises(ValueError, match="cannot train on these shards") as err:
        _train(data_dir, tmp_path / "run", *overrides, f"data.shard_dir={shards}")
    assert str(shards) in str(err.value) and why in str(err.value)
    assert not (tmp_path / "run" / "checkpoints").exists()
