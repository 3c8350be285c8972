"""``python -m heartgpt.export format=hub`` (issue 31): a released model, a demo AF fine-tune
and a LoRA fine-tune become a folder (``model.safetensors``, ``config.json``, ``trust.json``,
``README.md``) that ``load_model(<folder>)`` reads back with logits identical to the source's
and its calibration and OOD reference; the card says SYNTHETIC for a demo run and carries its
metrics; ``predict checkpoint=<folder>`` predicts what the source does; bad folders are one line.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from heartgpt.data.demo import draw_subjects, synthesize
from heartgpt.errors import InputError
from heartgpt.export import export
from heartgpt.inference.predictor import predict
from heartgpt.model.checkpoint_format import CheckpointError, LoadedModel
from heartgpt.model.checkpoints import find_weights, load_model
from heartgpt.model.safetensors_file import save_safetensors
from heartgpt.predict import compose_config
from heartgpt.training.run import train
from test_export_heads import HEADS, write_ckpt
from tiny import tiny_gpt
from training_helpers import TINY_CALIBRATED_AF, build_ecg_demo_500, compose_train

# 500-token windows (5 s at 100 Hz): predict's signal-quality checks need seconds, not 0.64 s
TINY_AF = [*TINY_CALIBRATED_AF, "model.block_size=500", "modality=ecg"]


def hub_export(checkpoint: Path, out: Path, *extra: str) -> Path:
    """``python -m heartgpt.export checkpoint=<checkpoint> format=hub out=<out>`` in-process."""
    cfg = compose_train([f"checkpoint={checkpoint}", "format=hub", f"out={out}", *extra],
                        config_name="export")
    assert export(cfg).ok
    return out


def logits_of(loaded: LoadedModel, vocab: int = 101) -> torch.Tensor:
    """The model's logits on three fixed token windows of its full context."""
    config = loaded.model.config
    tokens = torch.randint(0, vocab, (3, config.block_size),
                           generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return loaded.model(tokens)


def card_of(folder: Path) -> tuple[dict, str]:
    """The model card's YAML front matter (parsed) and its text."""
    text = (folder / "README.md").read_text()
    assert text.startswith("---\n")
    meta, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(meta), body


def section(body: str, title: str) -> str:
    """The text of the card's ``## <title>`` section."""
    return body.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def assert_same_model(folder: Path, source: LoadedModel) -> LoadedModel:
    back = load_model(folder)
    assert torch.equal(logits_of(back), logits_of(source))  # identical, not merely close
    assert back.model.config == source.model.config
    assert (back.modality, back.task, back.synthetic, back.head) == \
        (source.modality, source.task, source.synthetic, source.head)
    return back


# ----------------------------------------------------------------------------- released


@pytest.mark.shared
def test_a_released_model_as_a_hub_folder(weights_dir, tmp_path):
    source = load_model(weights_dir / "ECGPT_AF_1k_iters.zip")
    folder = hub_export(weights_dir / "ECGPT_AF_1k_iters.zip", tmp_path / "ecg_af")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json",
                                                         "model.safetensors"]
    assert_same_model(folder, source)
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "GPT" and config["model_config"]["vocab_size"] == 101
    assert config["vocabulary"]["sample_rate_hz"] == 100.0 and config["synthetic"] is False
    assert config["head"] == source.head and config["calibration"] is None
    meta, body = card_of(folder)
    assert meta["license"] == "mit" and meta["library_name"] == "heartgpt"
    assert {"ecg", "atrial-fibrillation"} <= set(meta["tags"]) and "synthetic-data" not in meta["tags"]
    data = section(body, "Training data")
    assert "MIMIC PERform AF dataset" in data and "PhysioNet/CinC Challenge 2020" in data
    assert "not SYNTHETIC" in data and "**SYNTHETIC data.**" not in body
    for title in ("## What it predicts", "## Training data", "## Evaluation",
                  "## Intended use and limits", "## How to load"):
        assert title in body
    assert "Not a medical device" in section(body, "Intended use and limits")
    assert "AUROC 0.99" in section(body, "Evaluation")


# ----------------------------------------------------------------------------- a demo run


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return build_ecg_demo_500(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def demo_af(data_dir, tmp_path_factory) -> Path:
    """A tiny AF fine-tune of the SYNTHETIC demo data (4 steps, tested, calibrated): its run dir."""
    out = tmp_path_factory.mktemp("af")
    train(compose_train(TINY_AF, data_dir=data_dir, output_dir=out, log_dir=out / "logs"))
    return out


@pytest.mark.slow
def test_a_demo_af_finetune_as_a_hub_folder_carries_its_metrics_and_trust(demo_af, tmp_path):
    ckpt = demo_af / "checkpoints" / "last.ckpt"
    source = load_model(ckpt)
    assert source.synthetic and source.calibration is not None and source.ood_reference
    evaluated = {"task": "af", "checkpoint": str(ckpt), "split": "val", "windows": 7,
                 "shard_dir": "/data/demo/ecg/af", "metrics": {"auroc": 0.625, "f1": None}}
    (tmp_path / "eval_metrics.json").write_text(json.dumps(evaluated))
    folder = hub_export(ckpt, tmp_path / "demo_af", f"eval_metrics={tmp_path / 'eval_metrics.json'}")
    back = assert_same_model(folder, source)
    assert back.calibration == source.calibration  # the temperature, from config.json
    ref, want = back.ood_reference, source.ood_reference
    for key in ("mean", "precision", "levels", "quantiles"):
        assert torch.equal(getattr(ref, key), getattr(want, key)), key
    assert (ref.pooling, ref.windows, ref.threshold) == (want.pooling, want.windows, want.threshold)
    x = torch.randn(4, source.model.config.n_embd)
    assert torch.equal(ref.distances(x), want.distances(x))

    meta, body = card_of(folder)
    assert "synthetic-data" in meta["tags"]
    assert "**SYNTHETIC data.**" in body.split("## ", 1)[0]  # above every section
    assert "**SYNTHETIC data.**" in section(body, "Training data")
    assert "say nothing about real ECG/PPG" in section(body, "Evaluation")
    tested = json.loads((demo_af / "test_metrics.json").read_text())
    results = {r["dataset"]["split"]: {m["type"]: m["value"] for m in r["metrics"]}
               for r in meta["model-index"][0]["results"]}
    assert meta["model-index"][0]["name"] == "demo_af"
    assert results["test"]["auroc"] == tested["test/auroc"]
    assert results["test"]["loss"] == tested["test/loss"]
    assert results["val"] == {"auroc": 0.625}  # an undefined metric has no value
    assert {"auroc", "f1", "loss"} <= set(meta["metrics"])
    assert f"| auroc | {tested['test/auroc']:.4f} |" in body
    assert f"{round(tested['test/windows'])} windows" in body
    assert "split `val` of `/data/demo/ecg/af`, 7 windows" in body and "| f1 | undefined |" in body
    assert f"temperature {source.calibration.temperature:.4g}" in body


@pytest.mark.slow
def test_predict_reads_a_hub_folder_as_its_source(demo_af, tmp_path):
    ckpt = demo_af / "checkpoints" / "last.ckpt"
    folder = hub_export(ckpt, tmp_path / "hub")
    files = []
    for subject in draw_subjects("ecg", 2, seed=5):  # two SYNTHETIC ECGs of 20 s
        recording = synthesize(subject, "ecg", 20.0)
        files.append(tmp_path / f"{subject.name}.npy")
        np.save(files[-1], recording.signal)
        rate = recording.sample_rate
    rows = {}
    for name, checkpoint in (("ckpt", ckpt), ("hub", folder)):
        out = tmp_path / f"out_{name}"
        cfg = compose_config(["trainer.enable_progress_bar=false", f"paths.log_dir={out}",
                              f"checkpoint={checkpoint}", f"inputs=[{','.join(map(str, files))}]",
                              f"sample_rate={rate}", f"out_dir={out}", "mode=head"])
        assert predict(cfg)["ok"] == 2
        with open(out / "windows.csv", newline="") as f:
            rows[name] = list(csv.DictReader(f))
    assert len(rows["hub"]) >= 4 and rows["hub"] == rows["ckpt"]
    assert any(k.startswith("ood") for k in rows["hub"][0])  # the OOD reference was read too


@pytest.mark.slow
def test_a_lora_finetune_as_a_hub_folder_is_merged(data_dir, tmp_path):
    from safetensors import safe_open

    base = save_safetensors(tiny_gpt(vocab_size=101, block_size=500), tmp_path / "base.safetensors", "ecg")
    out = tmp_path / "lora"
    train(compose_train([*TINY_AF, "finetune=lora", "freeze=head", f"module.pretrained={base}"],
                        data_dir=data_dir, output_dir=out, log_dir=out / "logs"))
    ckpt = out / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=True).get("base_weights")  # adapters only, base named
    source = load_model(ckpt)
    folder = hub_export(ckpt, tmp_path / "hub")
    assert_same_model(folder, source)
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        keys = list(f.keys())
    assert keys and not [k for k in keys if "lora" in k]
    config = json.loads((folder / "config.json").read_text())
    assert set(config["model_config"]) == set(source.model.config.to_dict())
    assert "**SYNTHETIC data.**" in section(card_of(folder)[1], "Training data")


# ----------------------------------------------------------------------------- heads, errors


def test_a_regression_head_keeps_its_tensors_and_standardisation(tmp_path):
    ckpt = write_ckpt(tmp_path, "regress")
    source = load_model(ckpt)
    folder = hub_export(ckpt, tmp_path / "bp")
    back = assert_same_model(folder, source)
    assert set(back.head_state) == set(source.head_state)
    for key, value in source.head_state.items():
        assert torch.equal(back.head_state[key], value), key
    assert back.hparams["label_schema"] == HEADS["regress"][1]
    config = json.loads((folder / "config.json").read_text())
    assert config["standardisation"] == {"names": ["sbp", "dbp"], "mean": [70.0, 30.0],
                                         "std": [12.0, 5.0]}
    assert "sbp, dbp" in card_of(folder)[1]


def test_bad_hub_folders_are_one_line(tmp_path):
    ckpt = write_ckpt(tmp_path, "attention")
    folder = hub_export(ckpt, tmp_path / "hub")
    assert find_weights(folder) == folder / "model.safetensors"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="a folder, not a checkpoint file or a hub folder"):
        load_model(empty)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "format": "other"}))
    with pytest.raises(CheckpointError, match="config.json: not a heartgpt hub config"):
        load_model(folder)
    (folder / "config.json").write_text(json.dumps({**config, "ood_reference": "trust.json"}))
    with pytest.raises(CheckpointError, match="names an OOD reference trust.json that is not"):
        load_model(folder)
    (folder / "config.json").write_text(json.dumps({**config, "calibration": {"kind": "x"}}))
    with pytest.raises(CheckpointError, match="its calibration cannot be read"):
        load_model(folder)
    (empty / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="holds other files \\(notes.txt\\)"):
        hub_export(ckpt, empty)
    assert (empty / "notes.txt").read_text() == "mine"
    with pytest.raises(InputError, match="eval_metrics=.*no such file"):
        hub_export(ckpt, tmp_path / "hub2", f"eval_metrics={tmp_path / 'missing.json'}")
