"""The trust state (issue 29): temperature scaling recovers a known temperature; the OOD reference
puts held-out windows below its threshold and far ones above; a fine-tune stores both in its
checkpoints when it ends (and not with ``callbacks.calibration.enabled=false``); its test and
``eval`` report ECE and Brier before and after; ``python -m heartgpt.calibrate`` of the released
ECG AF model writes a checkpoint ``load_model`` reads with the same raw logits and a
temperature."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from heartgpt.files import sha256_file
from heartgpt.heads.calibration import (
    fit_ood_reference,
    fit_temperature,
    scaled_probabilities,
)
from heartgpt.model.checkpoint_format import CheckpointError
from heartgpt.model.checkpoints import load_model
from heartgpt.model.trust import (
    CALIBRATED_FROM,
    calibrated_probabilities,
    ood_percentiles,
    ood_scores,
    window_outputs,
)
from heartgpt.training.calibration_run import calibrate
from heartgpt.training.evaluation import evaluate
from heartgpt.training.run import train
from training_helpers import (
    TINY_CALIBRATED_AF,
    TINY_MODEL,
    build_ecg_demo_500,
    compose_eval,
    compose_train,
)

TINY_AF = TINY_CALIBRATED_AF
FAST = ["debug=fast", "logger=csv", "callbacks.progress.mode=log",
        "callbacks.rich_model_summary=null", "data.global_batch_size=4"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """SYNTHETIC ECG demo shards with 500-sample fine-tuning windows (the released context)."""
    return build_ecg_demo_500(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def finetuned(data_dir, tmp_path_factory) -> Path:
    """A tiny AF fine-tune (4 steps, test=true) with the calibration callback on."""
    out = tmp_path_factory.mktemp("af")
    train(compose_train(TINY_AF, data_dir=data_dir, output_dir=out, log_dir=out / "logs"))
    return out


def _best(out: Path) -> Path:
    (best,) = [p for p in (out / "checkpoints").glob("*.ckpt") if p.name != "last.ckpt"]
    return best


# ------------------------------------------------------------------------------ the maths


def test_temperature_fit_recovers_a_known_temperature():
    g = torch.Generator().manual_seed(0)
    z = 4 * torch.randn(20_000, generator=g)  # over-confident logits: the truth is z / 2.5
    labels = torch.bernoulli(torch.sigmoid(z / 2.5), generator=g)
    assert fit_temperature(z, labels, "binary") == pytest.approx(2.5, rel=0.06)
    logits = 3 * torch.randn(20_000, 4, generator=g)
    labels = torch.multinomial(torch.softmax(logits / 0.5, dim=1), 1, generator=g).squeeze(1)
    assert fit_temperature(logits, labels, "multiclass") == pytest.approx(0.5, rel=0.06)
    # dividing by T keeps every ranking
    p = scaled_probabilities(z[:100], 2.5, "binary")
    assert torch.equal(p.argsort(), torch.sigmoid(z[:100]).argsort())


def test_ood_reference_thresholds_held_out_and_far_windows():
    g = torch.Generator().manual_seed(1)
    mix = torch.randn(16, 16, generator=g)
    train_x, held_out = torch.randn(2000, 16, generator=g) @ mix, torch.randn(500, 16, generator=g) @ mix
    ref = fit_ood_reference(train_x, held_out, [0.5, 0.9, 0.99], 0.99, None, "last")
    inside = ref.distances(torch.randn(1000, 16, generator=g) @ mix)
    far = ref.distances(torch.randn(100, 16, generator=g) @ mix + 5 * mix.std())
    assert (inside > ref.threshold).float().mean() < 0.03
    assert bool((far > ref.threshold).all())
    assert ref.percentiles(far).min() >= 99.0 and ref.percentiles(inside).median() < 70
    with pytest.raises(ValueError, match="threshold_level"):
        fit_ood_reference(train_x, held_out, [0.5, 0.9], 0.99, None, "last")


# ------------------------------------------------------------------------------ a fine-tune


def test_finetune_stores_temperature_and_ood_reference(finetuned, data_dir):
    for path in (_best(finetuned), finetuned / "checkpoints" / "last.ckpt"):
        loaded = load_model(path)
        assert loaded.calibration is not None, path
        assert loaded.calibration.split == "val" and loaded.calibration.windows > 0
        assert loaded.calibration.temperature > 0 and loaded.calibration.kind == "binary"
        assert loaded.calibration.nll_after <= loaded.calibration.nll_before + 1e-9
        ref = loaded.ood_reference
        assert ref is not None and ref.pooling == "mean" and tuple(ref.mean.shape) == (32,)
        assert ref.windows == 16  # the cap (the training split holds 30)
    metrics = json.loads((finetuned / "test_metrics.json").read_text())
    assert {"test/ece", "test/brier", "test/ece_calibrated", "test/brier_calibrated"} <= set(metrics)
    assert metrics["temperature"] == pytest.approx(load_model(_best(finetuned)).calibration.temperature)
    assert (finetuned / "test_reliability.png").stat().st_size > 1000


def test_trust_readers_of_a_finetune_agree(finetuned):
    from heartgpt.data.shards import read_shards

    loaded = load_model(_best(finetuned))
    data = read_shards(Path(loaded.calibration.shard_dir))
    real = torch.from_numpy(data.tokens[:8, -64:].astype("int64"))
    logits, pooled = window_outputs(loaded, real)
    torch.testing.assert_close(pooled, loaded.model.hidden(real).mean(dim=1).detach())
    distances = ood_scores(loaded, pooled=pooled)
    torch.testing.assert_close(distances, ood_scores(loaded, real))
    percentiles = ood_percentiles(loaded, distances)
    assert percentiles.shape == (8,) and bool(((percentiles >= 0) & (percentiles <= 100)).all())
    calibrated = calibrated_probabilities(loaded, logits)
    expected = torch.sigmoid(logits[:, 0] / loaded.calibration.temperature)
    torch.testing.assert_close(calibrated, expected)


def test_eval_reports_calibration_before_and_after(finetuned, data_dir, tmp_path):
    cfg = compose_eval(["task=af", f"checkpoint={_best(finetuned)}", *TINY_MODEL, "logger=none",
                        "data.num_workers=0", "data.split=test", "data.test_fraction=0.5"],
                       data_dir=data_dir, output_dir=tmp_path)
    report = evaluate(cfg)
    metrics = report["metrics"]
    assert {"ece", "brier", "ece_calibrated", "brier_calibrated"} <= set(metrics)
    assert 0 <= metrics["ece"] <= 1 and 0 <= metrics["ece_calibrated"] <= 1
    assert report["temperature"] == pytest.approx(load_model(_best(finetuned)).calibration.temperature)
    assert (tmp_path / "eval_reliability.png").is_file()
    saved = json.loads((tmp_path / "eval_metrics.json").read_text())
    assert saved["metrics"]["ece_calibrated"] == metrics["ece_calibrated"]


def test_switched_off_calibration_stores_nothing(data_dir, tmp_path):
    cfg = compose_train([*TINY_AF, "callbacks.calibration.enabled=false"], data_dir=data_dir,
                        output_dir=tmp_path, log_dir=tmp_path / "logs")
    train(cfg)
    loaded = load_model(_best(tmp_path))
    assert loaded.calibration is None and loaded.ood_reference is None
    assert ood_scores(loaded, torch.zeros(1, 64, dtype=torch.long)) is None  # unavailable
    metrics = json.loads((tmp_path / "test_metrics.json").read_text())
    assert "test/ece" in metrics and "test/ece_calibrated" not in metrics
    assert metrics["temperature"] is None


# ------------------------------------------------------------------------------ calibrate


def _calibrate(overrides: list[str], data_dir: Path, out: Path) -> dict:
    cfg = compose_train(["data.num_workers=0", "data.global_batch_size=16",
                         "callbacks.calibration.max_windows=48",
                         "callbacks.calibration.max_reference_windows=48", *overrides],
                        data_dir=data_dir, output_dir=out, config_name="calibrate")
    return calibrate(cfg)


@pytest.fixture(scope="module")
def more_data(tmp_path_factory) -> Path:
    """SYNTHETIC ECG demo shards of 8 subjects x 2 min (about 47 windows of 500 each)."""
    return build_ecg_demo_500(tmp_path_factory.mktemp("more"), subjects=8, seconds=120,
                              rows_per_shard=128)


@pytest.mark.shared
@pytest.mark.slow
def test_calibrate_released_af_model_writes_a_checkpoint_load_model_reads(weights_dir, more_data,
                                                                          tmp_path):
    released = weights_dir / "ECGPT_AF_1k_iters.zip"
    report = _calibrate([f"checkpoint={released}", "callbacks.calibration.max_windows=100",
                         "callbacks.calibration.max_reference_windows=250"], more_data, tmp_path)
    written = Path(report["checkpoint"])
    assert written.parent == tmp_path and written.suffix == ".ckpt"
    original, calibrated = load_model(released), load_model(written)
    assert calibrated.hparams[CALIBRATED_FROM] == {"path": str(released.resolve()),
                                                   "sha256": sha256_file(released)}
    assert calibrated.calibration.source == calibrated.hparams[CALIBRATED_FROM]
    assert calibrated.task == "af" and calibrated.head == original.head
    tokens = torch.randint(0, 101, (3, 500), generator=torch.Generator().manual_seed(0))
    raw_before, _ = window_outputs(original, tokens)
    raw_after, pooled = window_outputs(calibrated, tokens)
    torch.testing.assert_close(raw_after, raw_before, rtol=0, atol=0)  # raw logits unchanged
    assert calibrated.calibration.temperature > 0 and calibrated.ood_reference is not None
    assert ood_scores(calibrated, pooled=pooled).shape == (3,)
    assert original.calibration is None and ood_scores(original, tokens) is None
    assert (tmp_path / "calibrate.json").is_file()
    # in-distribution windows (the test subjects) below the threshold, noise above
    from heartgpt.data.shards import read_shards

    data = read_shards(more_data / "demo" / "ecg" / "af")
    real = torch.from_numpy(data.tokens[::8, -500:].astype("int64"))
    threshold = calibrated.ood_reference.threshold
    assert (ood_scores(calibrated, real) > threshold).float().mean() <= 0.05
    assert bool((ood_scores(calibrated, tokens) > threshold).all())
    assert ood_percentiles(calibrated, ood_scores(calibrated, tokens)).min() >= 99.0


@pytest.mark.shared
def test_calibrate_refuses_a_checkpoint_of_another_modality(weights_dir, data_dir, tmp_path):
    with pytest.raises(CheckpointError, match="PPG checkpoint cannot be calibrated on ECG"):
        _calibrate([f"checkpoint={weights_dir / 'PPGPT_AF_1k_iters.zip'}"], data_dir, tmp_path)


def test_cross_validation_pools_calibration_of_every_fold(data_dir, tmp_path):
    from heartgpt.cv import run_cv, summarize

    cfg = compose_train([*FAST, *TINY_MODEL, "task=af", "data.folds=2", "trainer.max_steps=2",
                         "trainer.val_check_interval=2", "callbacks.calibration.files=[best]"],
                        data_dir=data_dir, output_dir=tmp_path / "unused", log_dir=tmp_path / "logs")
    summary = run_cv(cfg, tmp_path / "cv")
    pooled = summary["pooled"]
    assert {"ece", "brier", "ece_calibrated", "brier_calibrated"} <= set(pooled)
    temperatures = [f["temperature"] for f in summary["folds"]]
    assert all(t is not None and t > 0 for t in temperatures)
    assert "test/ece_calibrated" in summary["mean"]
    assert (tmp_path / "cv" / "reliability.png").is_file()
    assert summarize(tmp_path / "cv") == summary
