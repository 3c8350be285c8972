"""``heartgpt.apply``: one call (a model, a signal, its rate) gives the rows ``predict`` writes
for a file holding that signal, in every mode it is asked for, with the mode's yaml settings
replaced by keywords and a setting the mode does not read refused."""

from __future__ import annotations

import csv
import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import heartgpt
from heartgpt.data.labels import LabelSchema
from heartgpt.errors import InputError
from heartgpt.heads.registry import build_head
from heartgpt.inference.predictor import predict
from heartgpt.model import GPT, GPTConfig
from heartgpt.model.safetensors_file import save_safetensors
from heartgpt.predict import compose_config

TINY = {"block_size": 64, "n_embd": 32, "n_head": 4, "n_layer": 2}
FILE_COLUMNS = {"recording", "path", "format", "status", "error"}


def _gpt(out_features: int | None) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=102, out_features=out_features, **TINY)).eval()


def _safetensors(tmp: Path, task: str, out_features: int | None) -> Path:
    return save_safetensors(_gpt(out_features), tmp / f"tiny_{task}.safetensors", modality="ppg",
                            task=task)


def _regression_ckpt(tmp: Path) -> Path:
    """One of our .ckpt files of a 2-value regression head (random weights, the training
    statistics set), as predict reads it."""
    gpt = _gpt(2)
    spec = {"kind": "regress", "outputs": 2, "pooling": "mean", "loss": "mse"}
    head = build_head(spec, TINY["n_embd"])
    head.objective.set_statistics(torch.tensor([70.0, 120.0]), torch.tensor([10.0, 15.0]))
    head.objective.standardised.fill_(True)
    state = {**{f"model.{k}": v for k, v in gpt.state_dict().items()},
             **{f"task_head.{k}": v for k, v in head.state_dict().items()}}
    schema = LabelSchema(names=("hr_bpm", "sbp"), kind="value").to_dict()
    hparams = {"model_config": dataclasses.asdict(gpt.config), "modality": "ppg",
               "task": "regress", "head": spec, "label_schema": schema}
    path = tmp / "tiny_regress.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": hparams}, path)
    return path


def _signal(n: int = 300) -> np.ndarray:
    rng = np.random.default_rng(3)
    return np.sin(np.arange(n) / 4) + 0.2 * np.sin(np.arange(n) / 11) + 0.05 * rng.normal(size=n)


def _predict_csv(tmp: Path, checkpoint: Path, *overrides: str) -> tuple[dict, list[dict], Path]:
    """The signal written to a CSV, ``predict`` run on it in-process: its recordings.csv row,
    its item rows and the CSV (whose read-back signal is what ``apply`` gets)."""
    data = tmp / "rec.csv"
    np.savetxt(data, _signal(), fmt="%.6f")
    out = tmp / "out"
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        summary = predict(compose_config(["trainer.enable_progress_bar=false",
                                          f"checkpoint={checkpoint}", f"inputs={data}",
                                          "sample_rate=50", f"out_dir={out}", *overrides]))
    finally:
        os.chdir(cwd)
    assert summary["ok"] == 1
    items = "beats.csv" if summary["mode"] == "beats" else "windows.csv"
    with (out / "recordings.csv").open(newline="") as f:
        (row,) = list(csv.DictReader(f))
    with (out / items).open(newline="") as f:
        rows = list(csv.DictReader(f))
    return row, rows, data


def _as_cells(row: dict) -> dict[str, str]:
    """A row as predict's CSV writes it (floats by repr, None empty)."""
    return {k: "" if v is None else repr(v) if isinstance(v, float) else str(v)
            for k, v in row.items()}


def _assert_same_tables(result: heartgpt.Applied, row: dict, rows: list[dict]) -> None:
    expected_row = {k: v for k, v in row.items() if k not in FILE_COLUMNS and v != ""}
    assert _as_cells(result.recording) == expected_row
    assert len(result.windows) == len(rows) > 1
    for ours, theirs in zip(result.windows, rows, strict=True):
        assert _as_cells(ours) == {k: v for k, v in theirs.items()
                                   if k != "recording" and (v != "" or k in ours)}


def test_af_equals_predict_on_the_same_file(tmp_path):
    ckpt = _safetensors(tmp_path, "af", 1)
    row, rows, data = _predict_csv(tmp_path, ckpt, "mode.stride=20")
    result = heartgpt.apply(ckpt, heartgpt.read_signal(data), 50, stride=20)
    assert result.mode == "af" and result.settings["threshold"] == 0.5  # conf/mode/af.yaml's
    assert "af_prob" in result.windows[0]
    _assert_same_tables(result, row, rows)
    assert result.array is None


def test_loss_of_a_loaded_model_equals_predict(tmp_path):
    ckpt = _safetensors(tmp_path, "pretrain", None)
    row, rows, data = _predict_csv(tmp_path, ckpt, "mode.stride=32", "mode.batch_size=3")
    loaded = heartgpt.load_model(ckpt)
    result = heartgpt.apply(loaded, heartgpt.read_signal(data), 50, stride=32, batch_size=3)
    assert result.mode == "loss" and "mean_loss" in result.recording
    _assert_same_tables(result, row, rows)
    # the loaded model is reused: another mode, its yaml's settings (back to back windows)
    embed = heartgpt.apply(loaded, heartgpt.read_signal(data), 50, mode="embed")
    assert embed.settings["stride"] is None and embed.settings["pool"] == "mean"
    assert [w["start_sample"] for w in embed.windows] == [0, 64, 128, 192, 236]  # 300 samples
    assert embed.array.shape == (5, TINY["n_embd"])


def test_a_regression_head_equals_predict_in_the_labels_terms(tmp_path):
    ckpt = _regression_ckpt(tmp_path)
    row, rows, data = _predict_csv(tmp_path, ckpt, "mode.stride=16")
    result = heartgpt.apply(str(ckpt), heartgpt.read_signal(data), 50, stride=16)
    assert result.mode == "head"
    assert {"mean_hr_bpm", "iqr_sbp"} <= set(result.recording)
    assert {"hr_bpm", "sbp"} <= set(result.windows[0])
    _assert_same_tables(result, row, rows)


def test_settings_and_inputs_that_cannot_be_used_are_one_clear_error(tmp_path):
    loaded = heartgpt.load_model(_safetensors(tmp_path, "pretrain", None))
    signal = _signal()
    with pytest.raises(InputError, match=r"mode\.threshold: is not a setting of mode=loss"):
        heartgpt.apply(loaded, signal, 50, mode="loss", threshold=0.3)
    with pytest.raises(InputError, match=r"mode\.threshold: mode=auto chose mode=loss"):
        heartgpt.apply(loaded, signal, 50, threshold=0.3)
    with pytest.raises(InputError, match=r"mode\.colour: is not a setting of mode=auto"):
        heartgpt.apply(loaded, signal, 50, colour="red")
    with pytest.raises(InputError, match=r"mode\.stride: must be a positive integer"):
        heartgpt.apply(loaded, signal, 50, mode="loss", stride=0)
    with pytest.raises(InputError, match="mode: must be one of"):
        heartgpt.apply(loaded, signal, 50, mode="fast")
    with pytest.raises(InputError, match="needs a fine-tuned 1-output model"):
        heartgpt.apply(loaded, signal, 50, mode="af")
    with pytest.raises(InputError, match=r"signal: must be a non-empty 1-D array, got shape \(2, 150\)"):
        heartgpt.apply(loaded, signal.reshape(2, 150), 50)
    with pytest.raises(InputError, match="sample_rate: must be a positive rate"):
        heartgpt.apply(loaded, signal, 0)
    with pytest.raises(InputError, match="signal: recording too short"):
        heartgpt.apply(loaded, signal[:40], 50)
