"""Risk-coverage (issue 29): dropping the least reliable windows first improves the metric where
the flags see what spoils it, and ``eval`` writes the table, the figure and the summary."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from heartgpt.data.demo import build_demo, draw_subjects, synthesize
from heartgpt.data.shards import read_shards
from heartgpt.data.signal_quality import load_trust
from heartgpt.data.tokenizer import resample, tokenize_window
from heartgpt.errors import ConfigError
from heartgpt.model import GPT, GPTConfig
from heartgpt.model.checkpoints import load_model
from heartgpt.model.safetensors_file import save_safetensors
from heartgpt.model.trust import fit_trust, write_calibrated
from heartgpt.training.evaluation import evaluate
from heartgpt.training.result_files import EVAL_METRICS
from heartgpt.training.risk_coverage import (
    RISK_COVERAGE_CSV,
    RISK_COVERAGE_PNG,
    check_settings,
    judge_windows,
    risk_coverage_table,
    window_metrics,
)
from training_helpers import compose_eval

COVERAGES = [1.0, 0.9, 0.8, 0.75, 0.7]


@pytest.fixture(scope="module")
def crafted() -> dict:
    """40 clean SYNTHETIC ECG windows (5 s at 100 Hz, as tokens) of AF and non-AF subjects, 10
    of them replaced by white noise; a "model" that is right on clean windows (P(AF) 0.65-0.95
    for AF, 0.05-0.35 for the others) and guesses on the noise (its probabilities inverted)."""
    rng = np.random.default_rng(3)
    tokens, labels = [], []
    for subject in draw_subjects("ecg", 8, 11):
        rec = synthesize(subject, "ecg", 26.0)
        x = resample(rec.signal, rec.sample_rate, 100.0)
        for k in range(5):
            tokens.append(tokenize_window(x[k * 500 : (k + 1) * 500]))
            labels.append(int(rec.label))
    tokens, labels = np.stack(tokens), np.array(labels)
    noisy = rng.choice(len(tokens), 10, replace=False)
    for i in noisy:
        tokens[i] = tokenize_window(rng.normal(size=500))
    probs = np.where(labels == 1, rng.uniform(0.65, 0.95, len(labels)),
                     rng.uniform(0.05, 0.35, len(labels)))
    probs[noisy] = 1.0 - probs[noisy]  # wrong on every noise window
    rows = [{"row": str(i), "subject": "s", "label": str(y), "prob": f"{p:.6f}"}
            for i, (y, p) in enumerate(zip(labels, probs, strict=True))]
    batches = [{"tokens": torch.as_tensor(tokens[i : i + 16]), "row": torch.arange(i, i + 16)
                if i + 16 <= len(tokens) else torch.arange(i, len(tokens))}
               for i in range(0, len(tokens), 16)]
    return {"rows": rows, "batches": batches, "noisy": set(noisy.tolist())}


def test_dropping_low_quality_windows_first_improves_the_metric(crafted):
    reliability = judge_windows(crafted["batches"], "ecg", 100.0, load_trust(), None, None)
    flagged = set(np.flatnonzero(reliability.flagged).tolist())
    assert crafted["noisy"] <= flagged  # the flags see every noise window
    assert len(flagged - crafted["noisy"]) <= 2  # and few clean ones
    metrics = window_metrics(crafted["rows"])
    table = risk_coverage_table(metrics, reliability.unreliability, COVERAGES, 20, 0)
    at = {r["coverage"]: r for r in table}
    assert at[1.0]["windows"] == 40 and at[0.75]["windows"] == 30
    assert at[1.0]["auroc"] < 0.9 and at[1.0]["acc"] == pytest.approx(0.75)
    assert at[0.75]["auroc"] > 0.99 and at[0.75]["acc"] > 0.95  # the noise dropped first
    assert at[0.75]["auroc"] > at[0.75]["auroc_random"] + 0.1  # random order does not help
    assert at[0.75]["auroc_random"] == pytest.approx(at[1.0]["auroc"], abs=0.08)

    off = judge_windows(crafted["batches"], "ecg", 100.0, None, None, None)  # quality off
    assert off.describe() == "none" and not off.unreliability.any()
    blind = {r["coverage"]: r for r in risk_coverage_table(metrics, off.unreliability,
                                                           COVERAGES, 0, 0)}
    assert blind[0.75]["auroc"] < 0.95  # nothing tells the noise: no better than random


def test_an_ood_score_orders_the_windows_when_quality_is_off(crafted):
    noisy = crafted["noisy"]

    def ood(tokens):  # a stand-in reference: far for noise, near otherwise
        t = tokens.double()
        d = (t.diff(dim=1).abs().mean(dim=1)).numpy()  # noise jumps, ECG moves smoothly
        return d, d / d.max()

    rel = judge_windows(crafted["batches"], "ecg", 100.0, None, ood, ood_threshold=10.0)
    assert rel.describe() == "OOD distance"
    assert set(np.flatnonzero(rel.flagged).tolist()) == noisy
    table = risk_coverage_table(window_metrics(crafted["rows"]), rel.unreliability, COVERAGES,
                                5, 0)
    assert table[3]["coverage"] == 0.75 and table[3]["auroc"] > 0.99


def test_metrics_of_each_kind_of_prediction_rows():
    multi = [{"row": "0", "label": "1", "predicted": "1", "prob_0": "0.2", "prob_1": "0.8"},
             {"row": "1", "label": "0", "predicted": "1", "prob_0": "0.4", "prob_1": "0.6"}]
    m = window_metrics(multi)
    assert m.main == "acc" and m.compute(np.array([0, 1]))["acc"] == 0.5
    values = [{"row": "0", "hr": "60", "predicted_hr": "62"},
              {"row": "1", "hr": "80", "predicted_hr": "70"}]
    m = window_metrics(values)
    assert m.main == "mae" and not m.higher_is_better["mae"]
    assert m.compute(np.array([0, 1]))["mae"] == pytest.approx(6.0)
    assert window_metrics([{"row": "0", "positives": "3", "mean_prob": "0.1"}]) is None
    with pytest.raises(ConfigError, match="coverages"):
        check_settings({"coverages": [1.0, 1.5], "random_orders": 1})
    with pytest.raises(ConfigError, match="max_windows"):
        check_settings({"coverages": [1.0], "random_orders": 1, "max_windows": 0})


def test_eval_writes_the_risk_coverage_of_a_model_holding_an_ood_reference(tmp_path):
    root = tmp_path / "data"
    build_demo(root / "demo" / "ecg", "ecg", subjects=3, seconds=20, seed=0,
               pretrain_samples=200, finetune_samples=100, finetune_stride=50,
               beat_tolerance=0, rows_per_shard=64)
    shard_dir = root / "demo" / "ecg" / "af"
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=101, out_features=1, block_size=64, n_embd=32, n_head=4,
                          n_layer=2))
    loaded = load_model(save_safetensors(model, tmp_path / "af.safetensors", modality="ecg",
                                         task="af"))
    tokens = torch.as_tensor(read_shards(shard_dir).tokens[:, -64:].astype(np.int64))
    batches = [{"tokens": tokens}]
    settings = {"max_windows": 1000, "max_reference_windows": 1000, "temperature": False,
                "lbfgs_iterations": 10, "ood_pooling": "mean", "ood_levels": [0.5, 0.99],
                "ood_threshold_level": 0.99, "ood_shrinkage": 0.5}
    _, ref = fit_trust(loaded, batches, batches, settings, "all", "all")
    ckpt = write_calibrated(loaded, tmp_path / "af_ood.ckpt", None, ref)
    out = tmp_path / "run"
    cfg = compose_eval(["task=af", f"checkpoint={ckpt}", f"data.shard_dir={shard_dir}",
                        "data.global_batch_size=25", "data.num_workers=0", "logger=csv",
                        "risk_coverage.random_orders=3"],
                       output_dir=out, log_dir=tmp_path / "logs")
    report = evaluate(cfg)
    rc = json.loads((out / EVAL_METRICS).read_text())["risk_coverage"]
    assert rc == report["risk_coverage"]
    assert rc["order"].endswith("OOD distance") and rc["windows"] == report["windows"]
    assert rc["quality_flagged"] + rc["quality_not_judged"] <= rc["windows"]
    assert rc["flagged"] >= max(rc["quality_flagged"], rc["ood_flagged"])
    assert 0 <= rc["ood_flagged"] <= rc["windows"] and rc["metric"] == "auroc"
    with open(out / RISK_COVERAGE_CSV, newline="") as f:
        table = list(csv.DictReader(f))
    assert [float(r["coverage"]) for r in table] == cfg.risk_coverage.coverages
    assert int(table[0]["windows"]) == report["windows"]
    assert float(table[0]["auroc"]) == pytest.approx(report["metrics"]["auroc"], abs=1e-4)
    assert (out / RISK_COVERAGE_PNG).stat().st_size > 0
    assert {RISK_COVERAGE_CSV, RISK_COVERAGE_PNG} <= set(report["files"])
    assert Path(report["checkpoint"]).name == "af_ood.ckpt" and rc["sampled_from"] is None
    cfg = compose_eval(["task=af", f"checkpoint={ckpt}", f"data.shard_dir={shard_dir}",
                        "data.num_workers=0", "logger=none", "risk_coverage.max_windows=10",
                        "risk_coverage.quality=false"], output_dir=tmp_path / "sample")
    sample = evaluate(cfg)["risk_coverage"]
    assert sample["windows"] == sample["table"][0]["windows"] == 10
    assert sample["sampled_from"] == report["windows"] > 10
    assert sample["order"] == "OOD distance" and sample["quality_not_judged"] == 10
