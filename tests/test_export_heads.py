"""Exports of heads with tensors outside the GPT (issue 28): a regression head (mean pooling,
the training split's mean and std), an attention-pooled 3-class head and a tag head of values
(one every 16 tokens), as ``.onnx`` and ``.safetensors``, give through ``predict mode=head``
what their ``.ckpt`` gives, to 1e-5.

The fine-tunes are a tiny random GPT and a head of random weights with its mean/std set directly,
written in the layout of our Lightning ``.ckpt`` files (no training: parity is all that counts).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import open_dict

import heartgpt
from heartgpt.errors import InputError
from heartgpt.export import export
from heartgpt.heads.registry import build_head
from heartgpt.inference.predictor import predict
from heartgpt.model.checkpoints import load_model
from heartgpt.model.export import check_export
from heartgpt.model.safetensors_file import load_safetensors, save_safetensors
from heartgpt.predict import compose_config
from tiny import tiny_gpt
from training_helpers import compose_train

pytest.importorskip("onnxruntime")

HEADS = {  # name -> (head, label schema, n_out of the GPT's linear head)
    "regress": ({"kind": "regress", "outputs": 2, "pooling": "mean", "loss": "mse"},
                {"names": ["sbp", "dbp"], "kind": "value", "classes": None, "stride": 1}, 2),
    "attention": ({"kind": "classify", "outputs": 3, "pooling": "attention"},
                  {"names": ["rhythm"], "kind": "class", "classes": ["sinus", "af", "ectopic"],
                   "stride": 1}, 3),
    "tag": ({"kind": "tag", "outputs": 1, "stride": 16, "target": "value"},
            {"names": ["hr_bpm"], "kind": "value", "classes": None, "stride": 16}, 1),
}


def write_ckpt(folder: Path, name: str) -> Path:
    """A fine-tune ``.ckpt`` of head ``name``: a tiny GPT and its head of random weights (a
    regression's mean and std set as training would)."""
    head, schema, n_out = HEADS[name]
    gpt = tiny_gpt(vocab_size=101, out_features=n_out)
    task_head = build_head(head, gpt.config.n_embd)
    torch.manual_seed(1)
    with torch.no_grad():
        for key, value in task_head.state_dict().items():
            if key.endswith("mean"):
                value.copy_(torch.tensor([70.0, 30.0])[: value.numel()])
            elif key.endswith("std"):
                value.copy_(torch.tensor([12.0, 5.0])[: value.numel()])
            elif key.endswith("standardised"):
                value.fill_(True)
            else:
                value.copy_(torch.randn_like(value))
    state = {**{f"model.{k}": v for k, v in gpt.state_dict().items()},
             **{f"task_head.{k}": v for k, v in task_head.state_dict().items()}}
    hparams = {"model_config": gpt.config.to_dict(), "modality": "ecg", "task": head["kind"],
               "head": head, "label_schema": schema}
    path = folder / f"{name}.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": hparams}, path)
    return path


def run_export(checkpoint: Path, fmt: str, out: Path) -> None:
    cfg = compose_train([f"checkpoint={checkpoint}", f"format={fmt}", f"out={out}"],
                        config_name="export")
    export(cfg)


def recordings(folder: Path) -> list[Path]:
    """Three ECG recordings at 100 Hz, a few windows of the tiny model (64 tokens) each."""
    rng = np.random.default_rng(0)
    files = []
    t = np.arange(300) / 100.0
    for i in range(3):
        signal = np.sin(2 * np.pi * (1.0 + 0.4 * i) * t) + 0.1 * rng.standard_normal(t.size)
        files.append(folder / f"rec{i}.npy")
        np.save(files[-1], signal)
    return files


def predicted(checkpoint: Path, files: list[Path], out: Path) -> list[dict[str, str]]:
    """``predict mode=head`` of ``checkpoint`` on ``files``: the rows of windows.csv."""
    cfg = compose_config(["trainer.enable_progress_bar=false", f"paths.log_dir={out / 'logs'}",
                          f"checkpoint={checkpoint}", f"inputs=[{','.join(map(str, files))}]",
                          "sample_rate=100", f"out_dir={out}", "mode=head"])
    summary = predict(cfg)
    assert summary["ok"] == len(files) and summary["mode"] == "head"
    with open(out / "windows.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("name", list(HEADS))
def test_onnx_and_safetensors_of_a_head_predict_what_its_ckpt_does(name, tmp_path, capsys):
    ckpt = write_ckpt(tmp_path, name)
    onnx, st = tmp_path / f"{name}.onnx", tmp_path / f"{name}.safetensors"
    run_export(ckpt, "onnx", onnx)
    run_export(ckpt, "safetensors", st)
    said = capsys.readouterr().out  # a head of values is compared as values, never probabilities
    values_head = HEADS[name][1]["kind"] == "value"
    assert ("probabilities" in said) is not values_head
    assert ("values (the labels' units)" in said) is values_head
    loaded_onnx = load_model(onnx)
    assert loaded_onnx.model.applies_head and loaded_onnx.head == HEADS[name][0]
    assert loaded_onnx.hparams["label_schema"] == HEADS[name][1]
    files = recordings(tmp_path)
    want = predicted(ckpt, files, tmp_path / "out_ckpt")
    schema = HEADS[name][1]
    columns = ([f"prob_{c}" for c in schema["classes"]] if schema["kind"] == "class"
               else schema["names"])
    values = np.array([[float(r[c]) for c in columns] for r in want])
    assert len(want) >= 9 and np.ptp(values, axis=0).min() > 1e-3  # windows differ
    if schema["kind"] == "value":  # in the labels' units: the standardisation undone
        assert 40 < values[:, 0].mean() < 100
    for export_file in (st, onnx):
        got = predicted(export_file, files, tmp_path / f"out_{export_file.suffix[1:]}")
        assert [(r["recording"], r["window"], r.get("position")) for r in got] == \
            [(r["recording"], r["window"], r.get("position")) for r in want]
        got_values = np.array([[float(r[c]) for c in columns] for r in got])
        np.testing.assert_allclose(got_values, values, rtol=0, atol=1e-5)
        if name == "attention":
            assert [r["predicted"] for r in got] == [r["predicted"] for r in want]


def test_safetensors_of_a_head_round_trips_its_tensors_and_schema(tmp_path):
    ckpt = load_model(write_ckpt(tmp_path, "regress"))
    path = save_safetensors(ckpt.model, tmp_path / "r.safetensors", ckpt.modality, ckpt.task,
                            head=ckpt.head, head_state=ckpt.head_state,
                            label_schema=ckpt.hparams["label_schema"])
    back = load_safetensors(path)
    assert back.head == ckpt.head and back.hparams == {"label_schema": HEADS["regress"][1]}
    assert set(back.head_state) == set(ckpt.head_state)
    for key, value in ckpt.head_state.items():
        assert torch.equal(back.head_state[key], value)
    assert check_export(ckpt, path).ok


def _parts(path: Path) -> tuple[dict, bytes]:
    """A safetensors file's header (parsed) and its tensor bytes."""
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def test_a_plain_gpt_safetensors_is_unchanged(tmp_path):
    """No head tensors, no schema: the header and tensor bytes of the layout from before heads
    were exported (safetensors writes metadata keys in no fixed order: headers compare parsed)."""
    from safetensors.torch import save

    gpt = tiny_gpt(vocab_size=101, out_features=1)
    a = save_safetensors(gpt, tmp_path / "a.safetensors", "ecg", "af")
    b = save_safetensors(gpt, tmp_path / "b.safetensors", "ecg", "af", head_state={},
                         label_schema=None)
    before = {"format": "heartgpt-safetensors-1", "config": json.dumps(gpt.config.to_dict()),
              "modality": "ecg", "task": "af", "synthetic": "false",
              "heartgpt_version": heartgpt.__version__}
    plain = tmp_path / "plain.safetensors"
    plain.write_bytes(save({k: v.contiguous() for k, v in gpt.state_dict().items()},
                           metadata=before))
    assert _parts(a) == _parts(plain) == _parts(b)
    assert load_safetensors(a).head_state == {} and load_safetensors(a).hparams == {}


def test_torch_export_of_a_head_with_state_is_refused_in_one_line(tmp_path):
    ckpt = write_ckpt(tmp_path, "attention")
    with pytest.raises(InputError, match="that a torch_export program cannot hold; use "
                       "format=onnx or format=safetensors"):
        run_export(ckpt, "torch_export", tmp_path / "x.pt2")
    assert not (tmp_path / "x.pt2").exists()
    with open_dict(cfg := compose_train([f"checkpoint={ckpt}"], config_name="export")):
        cfg.out = str(tmp_path / "y.onnx")
    assert export(cfg).ok
