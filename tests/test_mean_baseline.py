"""A regression is judged against always predicting its training split's mean: the objective
scores that baseline beside the model, and eval, the training run's test_metrics.json and
cross-validation say whether the model beats it (a probe collapsed to the mean does not)."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from heartgpt.cv import summarize
from heartgpt.eval import evaluate
from heartgpt.heads.applied import HeadReading
from heartgpt.heads.objectives import RegressionObjective
from heartgpt.heads.registry import build_head
from heartgpt.inference.head_prediction import values_against_training
from heartgpt.inference.predictor import predict
from heartgpt.predict import compose_config as compose_predict
from heartgpt.training.evaluation import print_summary
from heartgpt.training.mean_baseline import BEATS_MEAN_BASELINE, verdict
from heartgpt.training.result_files import TEST_METRICS, TEST_PREDICTIONS
from heartgpt.training.run import train
from training_helpers import (
    FAST,
    TINY_MODEL,
    build_tiny_targets,
    compose_eval,
    compose_train,
)

NAMES = ("sbp", "dbp")
MEAN, STD = np.array([120.0, 80.0]), np.array([15.0, 10.0])
# a model collapsed to a constant has no Pearson correlation: torchmetrics says so, and so do we
CONSTANT = pytest.mark.filterwarnings("ignore:The variance of predictions or target")


def _objective(mean=MEAN, std=STD):
    objective = build_head({"kind": "regress", "outputs": 2}, n_embd=16).objective
    objective.set_statistics(torch.tensor(mean), torch.tensor(std))
    return objective


def _targets(rng: np.random.Generator, n: int, centre=(126.0, 78.0)) -> np.ndarray:
    """(n, 2) blood pressures, a few missing."""
    target = rng.normal(centre, (14.0, 9.0), size=(n, 2))
    target[rng.random((n, 2)) < 0.15] = np.nan
    return target


def _scalars(objective, outputs: np.ndarray, target: np.ndarray) -> dict[str, float]:
    metrics = objective.metrics("sequence")
    for part in np.array_split(np.arange(len(target)), 3):  # several batches
        objective.update(metrics, torch.tensor(outputs[part], dtype=torch.float32),
                         torch.tensor(target[part], dtype=torch.float32))
    return {k: float(v) for k, v in objective.scalars(metrics.compute(), NAMES).items()}


def _numpy_errors(predicted: np.ndarray, target: np.ndarray, column: int) -> tuple[float, float]:
    ok = np.isfinite(target[:, column])
    error = predicted[ok, column] - target[ok, column]
    return float(np.abs(error).mean()), float(np.sqrt((error ** 2).mean()))


@CONSTANT
def test_the_objective_scores_the_training_mean_beside_the_model():
    rng = np.random.default_rng(0)
    target = _targets(rng, 60)
    objective = _objective()
    # a model that learnt something: the truth plus noise, in standardised units
    good = (np.nan_to_num(target, nan=100.0) + rng.normal(0, 4.0, target.shape) - MEAN) / STD
    scalars = _scalars(objective, good, target)
    for i, name in enumerate(NAMES):
        base_mae, base_rmse = _numpy_errors(np.broadcast_to(MEAN, target.shape), target, i)
        assert scalars[f"baseline_mae_{name}"] == pytest.approx(base_mae, rel=1e-5)
        assert scalars[f"baseline_rmse_{name}"] == pytest.approx(base_rmse, rel=1e-5)
        mae, rmse = _numpy_errors(good * STD + MEAN, target, i)
        assert scalars[f"mae_{name}"] == pytest.approx(mae, rel=1e-5)
        assert scalars[f"mae_{name}"] < scalars[f"baseline_mae_{name}"]
    assert verdict(scalars) == (True, None)

    # collapsed to the mean: the head outputs 0 standard deviations for every window
    collapsed = _scalars(_objective(), np.zeros_like(target), target)
    for name in NAMES:
        assert collapsed[f"mae_{name}"] == collapsed[f"baseline_mae_{name}"]
        assert collapsed[f"baseline_mae_{name}"] == pytest.approx(scalars[f"baseline_mae_{name}"])
    beats, warning = verdict(collapsed)
    assert beats is False
    assert warning.startswith("the model does not beat predicting the training mean (sbp: MAE ")
    assert "dbp: MAE" in warning


def test_one_column_that_does_not_beat_the_mean_fails_the_verdict():
    metrics = {"test/mae_sbp": 5.0, "test/baseline_mae_sbp": 12.0,
               "test/mae_dbp": 9.5, "test/baseline_mae_dbp": 9.0, "test/r2_dbp": -0.1}
    beats, warning = verdict(metrics, "test/")
    assert beats is False
    assert warning == ("the model does not beat predicting the training mean "
                       "(dbp: MAE 9.5 vs baseline 9)")
    assert verdict({"test/auroc": 0.5}, "test/") == (None, None)  # not a regression


def _write_fold(run_dir: Path, objective, outputs: np.ndarray, target: np.ndarray) -> None:
    """What a fold's training run leaves: test_metrics.json and test_predictions.csv."""
    run_dir.mkdir(parents=True)
    scalars = _scalars(objective, outputs, target)
    beats, _ = verdict(scalars)
    (run_dir / TEST_METRICS).write_text(json.dumps(
        {**{f"test/{k}": v for k, v in scalars.items()}, BEATS_MEAN_BASELINE: beats}))
    predicted = objective.predict(torch.tensor(outputs, dtype=torch.float32))
    rows = [{"row": i, "subject": f"s{i % 4}",
             **objective.record(predicted[i], torch.tensor(target[i]), NAMES)}
            for i in range(len(target))]
    with open(run_dir / TEST_PREDICTIONS, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@CONSTANT
def test_cross_validation_pools_the_baseline_of_each_folds_training_mean(tmp_path):
    rng = np.random.default_rng(1)
    means = [MEAN + d for d in ([0.0, 0.0], [6.0, -3.0], [-4.0, 2.0])]  # each fold's training mean
    all_targets, all_predicted, all_baseline = [], [], []
    for k, (mean, n) in enumerate(zip(means, (17, 9, 23), strict=True)):
        target = _targets(rng, n)
        # fold 1 collapsed to its training mean; the others learnt something
        outputs = np.zeros_like(target) if k == 1 else \
            (np.nan_to_num(target, nan=90.0) + rng.normal(0, 5.0, target.shape) - mean) / STD
        _write_fold(tmp_path / "cv" / f"fold_{k}", _objective(mean), outputs, target)
        all_targets.append(target)
        all_predicted.append(outputs * STD + mean)
        all_baseline.append(np.broadcast_to(mean, target.shape))
    target, predicted = np.concatenate(all_targets), np.concatenate(all_predicted)
    baseline = np.concatenate(all_baseline)

    summary = summarize(tmp_path / "cv")
    assert [f[BEATS_MEAN_BASELINE] for f in summary["folds"]] == [True, False, True]
    pooled = summary["pooled"]
    assert pooled["windows"] == len(target) == 49
    for i, name in enumerate(NAMES):
        mae, rmse = _numpy_errors(predicted, target, i)
        base_mae, base_rmse = _numpy_errors(baseline, target, i)
        assert pooled[f"mae_{name}"] == pytest.approx(mae, rel=1e-5)
        assert pooled[f"rmse_{name}"] == pytest.approx(rmse, rel=1e-5)
        assert pooled[f"baseline_mae_{name}"] == pytest.approx(base_mae, rel=1e-5)
        assert pooled[f"baseline_rmse_{name}"] == pytest.approx(base_rmse, rel=1e-5)
    assert pooled[BEATS_MEAN_BASELINE] is True
    assert BEATS_MEAN_BASELINE not in summary["mean"]  # a verdict, not a number to average
    with open(tmp_path / "cv" / "folds.csv", newline="") as f:
        assert [r[BEATS_MEAN_BASELINE] for r in csv.DictReader(f)] == ["True", "False", "True"]


def test_the_eval_summary_shows_the_baseline_beside_mae(tmp_path, capsys):
    report = {"task": "regress", "checkpoint": "hr.ckpt", "shard_dir": "shards", "split": "test",
              "windows": 8, "devices": 1, "files": [], BEATS_MEAN_BASELINE: False,
              "metrics": {"loss": 1.0, "mae": 16.5, "baseline_mae": 16.25, "rmse": 19.5,
                          "baseline_rmse": 19.25, "r2": -0.01}}
    print_summary(report, tmp_path)
    out = capsys.readouterr().out
    mae_line = next(line for line in out.splitlines() if " mae " in line)
    assert "16.5000" in mae_line and "16.2500" in mae_line
    assert "baseline_mae" not in out
    assert "beats always predicting the training mean (MAE): NO" in out


# ------------------------------------------------------------------------------ end to end

@pytest.fixture(scope="module")
def hr_shards(tmp_path_factory) -> Path:
    """The targets demo's heart-rate shards, tiny (12 subjects, 2 recordings each)."""
    return build_tiny_targets(tmp_path_factory.mktemp("targets")) / "hr"


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
@CONSTANT
def test_a_regressor_collapsed_to_the_mean_is_reported_not_beating_it(hr_shards, tmp_path,
                                                                     caplog):
    split = ["data.val_fraction=0.2", "data.test_fraction=0.3"]
    cfg = compose_train([*FAST, *TINY_MODEL, "model.block_size=500", "module.pretrained=null",
                         "task=regress", f"data.shard_dir={hr_shards}",
                         "trainer.max_steps=4", "test=true", "trainer.limit_test_batches=null",
                         *split], output_dir=tmp_path / "run", log_dir=tmp_path / "logs")
    train(cfg)
    tested = json.loads((tmp_path / "run" / TEST_METRICS).read_text())
    ckpt = torch.load(tested["checkpoint"], weights_only=True)
    mean = ckpt["state_dict"]["task_head.objective.mean"].item()
    hr = np.array([float(r["hr_bpm"]) for r in _rows(tmp_path / "run" / TEST_PREDICTIONS)])
    # the training run's own test metrics carry the baseline and the verdict
    assert tested["test/baseline_mae"] == pytest.approx(np.abs(hr - mean).mean(), rel=1e-5)
    assert tested["test/baseline_rmse"] == pytest.approx(np.sqrt(((hr - mean) ** 2).mean()),
                                                         rel=1e-5)
    assert tested[BEATS_MEAN_BASELINE] == (tested["test/mae"] < tested["test/baseline_mae"])

    # a constant model: its head outputs 0 standard deviations, i.e. the training mean
    for key in ("model.head.weight", "model.head.bias"):
        ckpt["state_dict"][key].zero_()
    constant = tmp_path / "constant.ckpt"
    torch.save(ckpt, constant)
    eval_cfg = compose_eval([f"checkpoint={constant}", "data.split=test", "logger=none",
                             "task=regress", f"data.shard_dir={hr_shards}", *split],
                            output_dir=tmp_path / "eval", log_dir=tmp_path / "logs")
    with caplog.at_level(logging.WARNING, logger="heartgpt"):
        report = evaluate(eval_cfg)
    m = report["metrics"]
    assert m["baseline_mae"] == pytest.approx(np.abs(hr - mean).mean(), rel=1e-5)
    assert m["mae"] == pytest.approx(m["baseline_mae"], rel=1e-6)
    assert report[BEATS_MEAN_BASELINE] is False
    saved = json.loads((tmp_path / "eval" / "eval_metrics.json").read_text())
    assert saved[BEATS_MEAN_BASELINE] is False and "baseline_rmse" in saved["metrics"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(w.startswith("the model does not beat predicting the training mean (MAE ")
               for w in warnings), warnings

    # predict over recordings, where no label is at hand: the values beside the training mean
    recordings = sorted((hr_shards.parent / "recordings").glob("*.npy"))[:4]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="heartgpt"):
        summary = predict(compose_predict([f"checkpoint={constant}", "sample_rate=500",
                                           f"inputs=[{','.join(map(str, recordings))}]",
                                           f"out_dir={tmp_path / 'predict'}",
                                           "trainer.enable_progress_bar=false",
                                           f"paths.log_dir={tmp_path / 'logs'}"]))
    spread = summary["values"]["hr_bpm"]
    assert spread["training_mean"] == pytest.approx(mean) and spread["collapsed"] is True
    assert spread["mean"] == pytest.approx(mean, rel=1e-5) and spread["n"] == 4
    assert any("hr_bpm: the predictions barely vary" in r.getMessage() for r in caplog.records)


def test_predictions_that_vary_like_the_training_values_are_not_collapsed():
    """``predict``'s check needs no label: the spread of what the model predicted against the
    training split's spread (a model collapsed to the mean predicts about one value)."""
    objective = RegressionObjective(1)
    objective.set_statistics(torch.tensor([70.0]), torch.tensor([12.0]))
    model = SimpleNamespace(task_head=SimpleNamespace(objective=objective),
                            reading=HeadReading("value", ("hr_bpm",), "hr_bpm", "sequence", 1,
                                                "label_schema"))
    varied = [{"hr_bpm": v} for v in (55.0, 62.0, 71.0, 84.0, 90.0)]
    flat = [{"hr_bpm": 70.0 + d} for d in (-0.3, 0.1, 0.2, -0.1, 0.4)]
    assert values_against_training(model, varied, 0.1)["hr_bpm"]["collapsed"] is False
    spread = values_against_training(model, flat, 0.1)["hr_bpm"]
    assert spread["collapsed"] is True and spread["training_sd"] == 12.0
    assert values_against_training(model, flat, 0.0)["hr_bpm"]["collapsed"] is False


@pytest.mark.slow
@pytest.mark.shared
def test_the_demo_hr_fine_tune_is_reported_beating_the_mean(hr_shards, weights_dir, tmp_path):
    """``experiment=demo_hr`` from the released ECGPT, 40 steps on the tiny targets demo: its
    test MAE is under the training mean's, and its metrics say so."""
    cfg = compose_train(["experiment=demo_hr", "logger=csv", "callbacks.progress.mode=log",
                         f"module.pretrained={weights_dir / 'ECGPT_560k_iters.zip'}",
                         f"data.shard_dir={hr_shards}", "trainer.max_steps=40",
                         "data.global_batch_size=8", "trainer.val_check_interval=20",
                         "module.warmup_steps=5", "data.val_fraction=0.2",
                         "data.test_fraction=0.3", "data.num_workers=0",
                         "callbacks.calibration.max_windows=64",
                         "callbacks.calibration.max_reference_windows=64"],
                        output_dir=tmp_path / "run", log_dir=tmp_path / "logs")
    train(cfg)
    tested = json.loads((tmp_path / "run" / TEST_METRICS).read_text())
    assert tested["test/mae"] < 0.75 * tested["test/baseline_mae"]
    assert tested[BEATS_MEAN_BASELINE] is True
