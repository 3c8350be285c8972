"""``python -m heartgpt.eval``: the released ECGPT scores shards prepared from real-format ECG
recordings exactly as ``GPT.forward`` does (and as a test-only ``heartgpt.train`` run does); AF
and beat evaluations write their per-window and per-beat rows and metrics; a checkpoint that
does not fit stops with an error naming it; (slow) 1 and 2 ``ddp_cpu`` processes agree exactly."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from torch.nn import functional as F

from heartgpt.data.demo import build_demo
from heartgpt.data.samplers import EvalSampler
from heartgpt.data.shards import read_shards
from heartgpt.model import GPT, GPTConfig
from heartgpt.model.checkpoint_format import CheckpointError
from heartgpt.model.checkpoints import load_model
from heartgpt.model.safetensors_file import save_safetensors
from heartgpt.training.evaluation import evaluate
from heartgpt.training.preparation import prepare
from heartgpt.training.result_files import EVAL_BEATS as BEATS
from heartgpt.training.result_files import EVAL_METRICS
from heartgpt.training.result_files import EVAL_PREDICTIONS as PREDICTIONS
from heartgpt.training.run import train
from training_helpers import CONF_DIR, compose_eval, compose_train, read_metrics_csv, run_module

ECGPT = "ECGPT_560k_iters.zip"
ECG_RECORDINGS = ("example_context_ECG", "example_context_ECG_AFib1", "example_context_ECG_AFib2")
TINY = {"block_size": 64, "n_embd": 32, "n_head": 4, "n_layer": 2}
LN_VOCAB = math.log(101)  # 4.615: the loss of a model that learnt nothing (or was never loaded)


# --------------------------------------------------------------------------------- data, models


@pytest.fixture(scope="module")
def ecg_shards(example_inputs_dir, tmp_path_factory) -> Path:
    """Shards made as a user makes them: three ECG recordings as CSV files (the released
    example inputs, 5 s at 100 Hz each, repeated to 15 s) through ``heartgpt.prepare``, in
    501-token segments every 250 samples: 4 per recording, 3 subjects."""
    root = tmp_path_factory.mktemp("ecg")
    raw = root / "raw"
    raw.mkdir()
    for name in ECG_RECORDINGS:
        signal = np.loadtxt(example_inputs_dir / f"{name}.csv", delimiter=",").ravel()
        np.savetxt(raw / f"{name}.csv", np.tile(signal, 3), fmt="%.6f")
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("prepare", overrides=[
            f"paths.data_dir={root / 'data'}", f"input={raw}", "sample_rate=100",
            "segment.samples=501", "segment.stride_samples=250", "num_workers=1",
            "progress=false", f"out_dir={root / 'shards'}"])
    prepare(cfg)
    return root / "shards"


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """Tiny SYNTHETIC demo shards: ECG AF windows and PPG beat windows of 100 tokens."""
    root = tmp_path_factory.mktemp("demo")
    for modality in ("ecg", "ppg"):
        build_demo(root / "demo" / modality, modality, subjects=3, seconds=20, seed=0,
                   pretrain_samples=200, finetune_samples=100, finetune_stride=50,
                   beat_tolerance=0, rows_per_shard=64)
    return root


def tiny_model(tmp_path: Path, name: str, modality: str | None, task: str = "af",
               vocab_size: int = 101, out_features: int | None = 1) -> Path:
    """A randomly initialised tiny GPT saved as a ``.safetensors`` export."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=vocab_size, out_features=out_features, **TINY))
    return save_safetensors(model, tmp_path / name, modality=modality, task=task)


def forward_loss(model: GPT, tokens: np.ndarray) -> float:
    """Mean next-token cross-entropy of ``model`` over windows of block_size + 1 tokens."""
    t = torch.from_numpy(tokens.astype(np.int64))
    with torch.no_grad():
        logits = model(t[:, :-1])
    return F.cross_entropy(logits.flatten(0, 1), t[:, 1:].flatten()).item()


def _eval(overrides: list[str], out: Path, data_dir: Path | None = None) -> dict:
    cfg = compose_eval([*overrides, "data.num_workers=0", "logger=csv"], data_dir=data_dir,
                       output_dir=out, log_dir=out.parent / "logs")
    report = evaluate(cfg)
    assert json.loads((out / EVAL_METRICS).read_text()) == report
    assert (out / "config.yaml").is_file()  # beside the run's resolved config
    return report


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------------- pre-training


@pytest.mark.shared
def test_released_ecgpt_scores_prepared_shards_as_gpt_forward(ecg_shards, weights_dir, tmp_path):
    data = read_shards(ecg_shards)
    assert data.tokens.shape == (12, 501)
    released = load_model(weights_dir / ECGPT).model
    expected = forward_loss(released, data.tokens)
    assert 0.5 < expected < 3.0  # the released model knows ECG (uniform: ln 101 = 4.615)

    # a bare released name, looked up in paths.weights_dir; every row, in batches of 5
    report = _eval([f"checkpoint={ECGPT}", f"paths.weights_dir={weights_dir}",
                    f"data.shard_dir={ecg_shards}", "data.global_batch_size=5"], tmp_path / "all")
    m = report["metrics"]
    assert report["windows"] == 12 and report["split"] == "all"
    assert report["checkpoint"] == str((weights_dir / ECGPT).resolve())
    assert m["loss"] == pytest.approx(expected, abs=1e-5)
    assert m["ppl"] == pytest.approx(math.exp(expected), rel=1e-5)
    assert 0.0 < m["acc"] < 1.0
    logged = read_metrics_csv(tmp_path / "all")  # the configured logger has them too
    assert float(next(r["test/loss"] for r in logged if r.get("test/loss"))) == pytest.approx(m["loss"])

    # one subject's windows: data.split=test, the subject split training uses
    split = ["data.val_fraction=0.5", "data.test_fraction=0.34", "data.global_batch_size=5"]
    test_eval = _eval([f"checkpoint={weights_dir / ECGPT}", f"data.shard_dir={ecg_shards}",
                       "data.split=test", *split], tmp_path / "test")["metrics"]
    assert test_eval["loss"] != pytest.approx(m["loss"], abs=1e-4)  # other windows

    # the test-only training run (weights loaded in every stage) gives the same loss
    cfg = compose_train([f"data.shard_dir={ecg_shards}", f"module.init_from={weights_dir / ECGPT}",
                         "train=false", "test=true", "logger=none", "data.num_workers=0", *split],
                        output_dir=tmp_path / "train", log_dir=tmp_path / "logs")
    train(cfg)
    tested = json.loads((tmp_path / "train" / "test_metrics.json").read_text())
    assert tested["test/loss"] == pytest.approx(test_eval["loss"], abs=1e-6)
    for loss in (m["loss"], test_eval["loss"], tested["test/loss"]):
        assert abs(loss - LN_VOCAB) > 1.0, "a released checkpoint scored as if never loaded"


# --------------------------------------------------------------------------------- fine-tuning


def test_af_eval_writes_each_windows_prediction_and_the_metrics(demo, tmp_path):
    ckpt = tiny_model(tmp_path, "af.safetensors", "ecg")
    shard_dir = demo / "demo" / "ecg" / "af"
    report = _eval(["task=af", f"checkpoint={ckpt}", f"data.shard_dir={shard_dir}",
                    "data.global_batch_size=25"], tmp_path / "run")
    assert {"loss", "auroc", "ap", "acc", "sensitivity", "specificity"} <= set(report["metrics"])
    data = read_shards(shard_dir)
    rows = _rows(tmp_path / "run" / PREDICTIONS)
    assert report["windows"] == len(rows) == len(data.tokens)
    assert [int(r["row"]) for r in rows] == list(range(len(data.tokens)))  # each once
    assert [int(r["label"]) for r in rows] == data.label.astype(int).tolist()
    model = load_model(ckpt).model  # block_size 64, from the checkpoint: the last 64 tokens
    with torch.no_grad():
        probs = torch.sigmoid(model(torch.from_numpy(data.tokens[:, -64:].astype(np.int64)))[:, -1, 0])
    np.testing.assert_allclose([float(r["prob"]) for r in rows], probs.numpy(), atol=1e-6)
    assert "block_size: 64" in (tmp_path / "run" / "config.yaml").read_text()


def test_beats_eval_writes_a_row_per_beat_that_the_scores_count(demo, tmp_path):
    ckpt = tiny_model(tmp_path, "beats.safetensors", "ppg", task="beats", vocab_size=102)
    report = _eval(["task=beats", "modality=ppg", f"checkpoint={ckpt}",
                    f"data.shard_dir={demo / 'demo' / 'ppg' / 'beats'}", "data.global_batch_size=16"],
                   tmp_path / "run")
    m = report["metrics"]
    beats = _rows(tmp_path / "run" / BEATS)
    detected = [b for b in beats if b["kind"] == "detected"]
    annotated = [b for b in beats if b["kind"] == "annotated"]
    assert detected and annotated
    tp = sum(b["matched"] != "-1" for b in detected)
    assert tp == sum(b["matched"] != "-1" for b in annotated)
    assert m["beat_precision"] == pytest.approx(tp / len(detected))
    assert m["beat_recall"] == pytest.approx(tp / len(annotated))
    assert len(_rows(tmp_path / "run" / PREDICTIONS)) == report["windows"]


@pytest.mark.parametrize(("case", "task", "says"), [
    ("ppg", "af", "a PPG checkpoint cannot score ECG data"),
    ("vocab", "af", "vocab size 102"),
    ("lm", "af", "pre-trained language model"),
    ("af", "pretrain", "fine-tuned head"),
    ("af", "beats", "fine-tuned af model"),
])
def test_a_checkpoint_that_does_not_fit_stops_naming_the_file(case, task, says, demo, tmp_path):
    ckpt = {
        "ppg": lambda: tiny_model(tmp_path, "ppg_af.safetensors", "ppg", vocab_size=102),
        "vocab": lambda: tiny_model(tmp_path, "v102.safetensors", None, vocab_size=102),
        "lm": lambda: tiny_model(tmp_path, "lm.safetensors", "ecg", "pretrain", out_features=None),
        "af": lambda: tiny_model(tmp_path, "af.safetensors", "ecg"),
    }[case]()
    cfg = compose_eval([f"task={task}", f"checkpoint={ckpt}", "logger=none"], data_dir=demo,
                       output_dir=tmp_path / "run")
    with pytest.raises(CheckpointError, match=says) as info:
        evaluate(cfg)
    assert str(info.value).startswith(str(ckpt.resolve()))
    assert not (tmp_path / "run" / EVAL_METRICS).exists()


# --------------------------------------------------------------------------------- devices


@pytest.mark.slow
def test_two_ddp_processes_score_each_window_once_and_agree_exactly(demo, tmp_path):
    ckpt = tiny_model(tmp_path, "af.safetensors", "ecg")
    shard_dir = demo / "demo" / "ecg" / "af"
    args = ["task=af", f"checkpoint={ckpt}", f"data.shard_dir={shard_dir}", "logger=none",
            "data.global_batch_size=50", "data.micro_batch_size=25",  # batches of 25 on 1 or 2
            "data.num_workers=0"]  # 117 windows (odd): 5 batches, 3 + 2
    runs = {}
    for devices in (1, 2):
        out = tmp_path / f"devices{devices}"
        ddp = ["trainer=ddp_cpu", f"trainer.devices={devices}"] if devices > 1 else []
        done = run_module([*args, *ddp, f"hydra.run.dir={out}"], cwd=tmp_path, module="heartgpt.eval")
        assert done.returncode == 0, done.stderr[-4000:]
        runs[devices] = json.loads((out / EVAL_METRICS).read_text()), _rows(out / PREDICTIONS)
    (one, rows1), (two, rows2) = runs[1], runs[2]
    assert (one["devices"], two["devices"]) == (1, 2)
    assert one["metrics"] == two["metrics"]  # exactly, not approximately
    assert one["windows"] == two["windows"] == len(rows2) == len(read_shards(shard_dir).tokens)
    assert rows1 == rows2  # the same windows, each once, the same probabilities

    # and from the command line, a checkpoint of the wrong modality is one error line
    ppg = tiny_model(tmp_path, "ppg_af.safetensors", "ppg", vocab_size=102)
    done = run_module([*args[:1], f"checkpoint={ppg}", *args[2:], f"hydra.run.dir={tmp_path / 'bad'}"],
                      cwd=tmp_path, module="heartgpt.eval")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: {ppg.resolve()}: a PPG checkpoint cannot score ECG data (modality=ecg); "
        "give modality=ppg and shards of that modality")


def test_eval_sampler_gives_each_rank_whole_batches_of_one_process_once():
    rows = np.arange(23) * 2

    def batches(rank: int, world: int, n: int = 23, size: int = 5) -> list[list[tuple[int, int]]]:
        sampler = EvalSampler(rows[:n], 10, 10, seed=0, offsets="last", batch_size=size,
                              rank=rank, world_size=world)
        keys = list(sampler)
        assert len(keys) == len(sampler)
        return [keys[i : i + size] for i in range(0, len(keys), size)]

    one = batches(0, 1)  # 5 batches, the last of 3
    for world in (2, 3):
        parts = [batches(rank, world) for rank in range(world)]
        assert sorted(b for part in parts for b in part) == sorted(one)  # same batches, once each
    # fewer batches than ranks: contiguous runs, none empty
    parts = [batches(rank, 4, n=7) for rank in range(4)]
    assert all(parts)
    assert sorted(k for part in parts for b in part for k in b) == [k for b in batches(0, 1, n=7) for k in b]
    with pytest.raises(ValueError, match="evaluate on fewer devices"):
        EvalSampler(rows[:1], 10, 10, seed=0, offsets="last", batch_size=5, rank=0, world_size=2)
