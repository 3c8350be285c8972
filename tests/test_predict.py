"""``python -m heartgpt.predict``: one model over a folder of mixed-format recordings gives, per
file, what ``screen_af`` / ``detect_beats`` give; a corrupt file is a row with its reason; a run
killed part-way resumes without redoing finished recordings; results of other settings are
never mixed into a folder; ``loss`` and ``embed`` compute what the model computes."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import wfdb
from torch.nn import functional as F

from heartgpt.data.readers import read_signal
from heartgpt.data.tokenizer import resample, tokenize_window
from heartgpt.detect_beats import main as detect_beats_main
from heartgpt.errors import InputError
from heartgpt.inference.af_screening import screen_af
from heartgpt.inference.prediction_store import MANIFEST, PARTS
from heartgpt.inference.predictor import predict
from heartgpt.model import GPT, GPTConfig
from heartgpt.model.checkpoints import load_model
from heartgpt.model.safetensors_file import save_safetensors
from heartgpt.predict import compose_config
from heartgpt.predict import main as predict_main
from heartgpt.screen_af import main as screen_af_main

TINY = {"block_size": 64, "n_embd": 32, "n_head": 4, "n_layer": 2}


def read_table(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def run_predict(tmp_path: Path, *overrides: str) -> dict:
    cwd = os.getcwd()
    os.chdir(tmp_path)  # outputs/ of the run land in tmp_path, as a user's would in theirs
    try:
        return predict(compose_config(["trainer.enable_progress_bar=false", *overrides]))
    finally:
        os.chdir(cwd)


def tiny_checkpoint(tmp_path: Path, task: str = "af", out_features: int | None = 1) -> Path:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=102, out_features=out_features, **TINY))
    return save_safetensors(model, tmp_path / f"tiny_{task}.safetensors", modality="ppg", task=task)


# --------------------------------------------------------------------------------- released models


@pytest.fixture(scope="module")
def mixed_folder(example_inputs_dir, tmp_path_factory) -> Path:
    """PPG recordings as a user has them: a 50 Hz CSV, a 50 Hz .npy, a WFDB record at its own
    100 Hz, a 40-s CSV, and a corrupt .npy."""
    root = tmp_path_factory.mktemp("recordings")
    ex = example_inputs_dir
    (root / "csv").mkdir()
    (root / "csv" / "normal.csv").write_text((ex / "example_context_PPG.csv").read_text())
    np.save(root / "afib.npy", read_signal(ex / "example_context_PPG_AFib.csv"))
    at_100 = resample(read_signal(ex / "example_context_PPG_AFib2.csv"), 50, 100)
    wfdb.wrsamp("afib2_100hz", fs=100, units=["au"], sig_name=["PPG"], fmt=["16"],
                p_signal=at_100[:, None], write_dir=str(root))
    long = read_signal(ex / "example_context_PPG_beat_detect_long_input.csv")[:2024]
    np.savetxt(root / "long.csv", long, fmt="%.6f")
    (root / "corrupt.npy").write_bytes(b"\x93NUMPY not really" + bytes(range(40)))
    return root


def test_af_over_a_mixed_folder_equals_screen_af_per_file(mixed_folder, weights_dir, tmp_path):
    ckpt = weights_dir / "PPGPT_AF_1k_iters.zip"
    summary = run_predict(tmp_path, f"checkpoint={ckpt}", f"inputs={mixed_folder}",
                          "sample_rate=50", "out_dir=af")
    rows = {r["recording"]: r for r in read_table(tmp_path / "af" / "recordings.csv")}
    assert sorted(rows) == ["afib", "afib2_100hz", "corrupt", "csv/normal", "long"]
    assert rows["corrupt"]["status"] == "failed" and "NumPy" in rows["corrupt"]["error"]
    assert summary["ok"] == 4 and summary["failed"] == 1
    assert rows["afib2_100hz"]["sample_rate_hz"] == "100.0"  # its own rate, not sample_rate=
    windows = read_table(tmp_path / "af" / "windows.csv")
    for name, path in (("csv/normal", mixed_folder / "csv" / "normal.csv"),
                       ("afib", mixed_folder / "afib.npy"), ("long", mixed_folder / "long.csv")):
        assert screen_af_main([str(path), "--checkpoint", str(ckpt), "--sample-rate", "50",
                               "--out-dir", str(tmp_path / "tool")]) == 0
        tool = json.loads((tmp_path / "tool" / f"{path.stem}_af.json").read_text())
        ours = [w for w in windows if w["recording"] == name]
        assert [float(w["af_prob"]) for w in ours] == [w["af_prob"] for w in tool["windows"]]
        assert float(rows[name]["recording_af_prob"]) == tool["recording_af_prob"]
        assert int(rows[name]["n_windows"]) == tool["n_windows"]
    record = wfdb.rdrecord(str(mixed_folder / "afib2_100hz"))
    loaded = load_model(ckpt)
    direct = screen_af(loaded.model.eval(), record.p_signal[:, 0], 100, "ppg")
    assert float(rows["afib2_100hz"]["recording_af_prob"]) == direct.recording_prob


def test_beats_over_a_mixed_folder_equal_detect_beats_per_file(mixed_folder, weights_dir,
                                                                tmp_path):
    ckpt = weights_dir / "PPGPT_beat_5k_iters.zip"
    run_predict(tmp_path, "mode=beats", f"checkpoint={ckpt}", f"inputs={mixed_folder}",
                "sample_rate=50", "out_dir=beats")
    rows = {r["recording"]: r for r in read_table(tmp_path / "beats" / "recordings.csv")}
    assert rows["corrupt"]["status"] == "failed"
    beats = read_table(tmp_path / "beats" / "beats.csv")
    for name, path in (("long", mixed_folder / "long.csv"), ("afib", mixed_folder / "afib.npy")):
        assert detect_beats_main([str(path), "--checkpoint", str(ckpt), "--sample-rate", "50",
                                  "--out-dir", str(tmp_path / "tool")]) == 0
        tool = json.loads((tmp_path / "tool" / f"{path.stem}_beats.json").read_text())
        tool_beats = read_table(tmp_path / "tool" / f"{path.stem}_beats.csv")
        ours = [b for b in beats if b["recording"] == name]
        assert int(rows[name]["n_beats"]) == tool["n_beats"] == len(tool_beats) == len(ours) > 0
        assert [b["sample"] for b in ours] == [b["sample"] for b in tool_beats]
        np.testing.assert_allclose([float(b["confidence"]) for b in ours],
                                   [float(b["confidence"]) for b in tool_beats], atol=5e-7)
        assert float(rows[name]["median_confidence"]) == tool["median_confidence"]
        assert rows[name]["quality"] == tool["quality"]
        assert float(rows[name]["median_bpm"]) == tool["heart_rate"]["median_bpm"]


# --------------------------------------------------------------------------------- resuming


def test_a_killed_run_resumes_without_redoing_finished_recordings(tmp_path):
    """SIGKILL part-way through, as a pre-empted job dies; the re-run predicts only the rest."""
    ckpt = tiny_checkpoint(tmp_path)
    data = tmp_path / "recordings"
    data.mkdir()
    rng = np.random.default_rng(0)
    n = 10
    t = np.arange(50 * 1200) / 50  # 20 min at 50 Hz each: long enough to be killed part-way
    for i in range(n):
        np.save(data / f"r{i:02d}.npy", np.sin(2 * np.pi * 1.2 * t) + 0.1 * rng.normal(size=t.size))
    out = tmp_path / "out"
    args = [f"checkpoint={ckpt}", f"inputs={data}", "sample_rate=50", f"out_dir={out}",
            "trainer.enable_progress_bar=false"]
    proc = subprocess.Popen([sys.executable, "-m", "heartgpt.predict", *args], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while len(list((out / PARTS).glob("*.json"))) < 2 and proc.poll() is None:
        assert time.monotonic() < deadline, "no recording finished in 300 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    _, stderr = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, f"finished before the kill: {stderr[-2000:]}"
    finished = {p: p.stat().st_mtime_ns for p in (out / PARTS).glob("*.json")}
    assert 2 <= len(finished) < n
    assert not (out / "recordings.csv").exists()  # tables are written at the end only

    summary = run_predict(tmp_path, *args)
    assert summary["done_in_earlier_runs"] == len(finished)
    assert summary["predicted_now"] == n - len(finished)
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # not written again
    rows = read_table(out / "recordings.csv")
    assert [r["recording"] for r in rows] == [f"r{i:02d}" for i in range(n)]
    assert all(r["status"] == "ok" for r in rows)
    # the same tables as one uninterrupted run
    fresh = run_predict(tmp_path, *args[:-2], f"out_dir={tmp_path / 'fresh'}")
    assert fresh["predicted_now"] == n
    for table in ("recordings.csv", "windows.csv"):
        assert read_table(out / table) == read_table(tmp_path / "fresh" / table)
    # a third run has nothing left to do
    assert run_predict(tmp_path, *args)["predicted_now"] == 0


def test_an_edited_recording_is_predicted_again_and_other_settings_are_refused(tmp_path):
    ckpt = tiny_checkpoint(tmp_path)
    data = tmp_path / "recordings"
    data.mkdir()
    for i in range(2):
        np.save(data / f"r{i}.npy", np.sin(np.arange(300) / (3 + i)))
    args = [f"checkpoint={ckpt}", f"inputs={data}", "sample_rate=50", "out_dir=out"]
    assert run_predict(tmp_path, *args)["predicted_now"] == 2
    np.save(data / "r1.npy", np.cos(np.arange(400) / 5))  # edited: new size and time
    summary = run_predict(tmp_path, *args)
    assert (summary["predicted_now"], summary["done_in_earlier_runs"]) == (1, 1)
    with pytest.raises(InputError, match=r"other settings \(differing: mode.stride\)"):
        run_predict(tmp_path, *args, "mode.stride=10")
    (tmp_path / "other").mkdir()
    torch.manual_seed(1)
    other = save_safetensors(GPT(GPTConfig(vocab_size=102, out_features=1, **TINY)),
                             tmp_path / "other" / "tiny_af.safetensors", modality="ppg", task="af")
    with pytest.raises(InputError, match="checkpoint, checkpoint_sha256"):
        run_predict(tmp_path, *args[1:], f"checkpoint={other}")
    summary = run_predict(tmp_path, *args, "mode.stride=10", "overwrite=true")
    assert summary["predicted_now"] == 2
    assert json.loads((tmp_path / "out" / MANIFEST).read_text())["mode"]["stride"] == 10


def test_a_checkpoint_that_does_not_fit_the_mode_is_one_error(tmp_path, monkeypatch):
    lm = tiny_checkpoint(tmp_path, task="pretrain", out_features=None)
    np.save(tmp_path / "r.npy", np.sin(np.arange(300) / 3))
    with pytest.raises(InputError, match="needs a fine-tuned 1-output model"):
        run_predict(tmp_path, f"checkpoint={lm}", "mode=af", f"inputs={tmp_path / 'r.npy'}")
    with pytest.raises(InputError, match="no such file or folder"):
        run_predict(tmp_path, f"checkpoint={lm}", "mode=loss", f"inputs={tmp_path / 'nothing'}")
    with pytest.raises(InputError, match=r"mode.shift: must be at most the model's window of 64 "
                                         r"samples, got 100"):
        run_predict(tmp_path, f"checkpoint={tiny_checkpoint(tmp_path, task='beats')}",
                    "mode=beats", f"inputs={tmp_path}")
    with pytest.raises(InputError, match=r"mode.stride: must be a positive integer or null"):
        run_predict(tmp_path, f"checkpoint={lm}", "mode=loss", f"inputs={tmp_path}",
                    "mode.stride=0")
    with pytest.raises(InputError, match="sample_rate: must be a positive rate"):
        run_predict(tmp_path, f"checkpoint={lm}", "mode=loss", f"inputs={tmp_path}",
                    "sample_rate=0")
    with pytest.raises(InputError, match="checkpoint is for PPG but --modality says ECG"):
        run_predict(tmp_path, f"checkpoint={lm}", f"inputs={tmp_path / 'r.npy'}",
                    "modality=ecg", "sample_rate=50")  # the recordings' modality, stated
    assert run_predict(tmp_path, f"checkpoint={lm}", f"inputs={tmp_path / 'r.npy'}",
                       "modality=ppg", "sample_rate=50", "out_dir=stated")["ok"] == 1
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["heartgpt.predict", f"checkpoint={lm}"])
    with pytest.raises(SystemExit, match="^error: inputs: not given: inputs="):
        predict_main()


def test_a_file_without_its_rate_fails_alone_when_sample_rate_is_not_given(tmp_path):
    ckpt = tiny_checkpoint(tmp_path)
    np.save(tmp_path / "plain.npy", np.sin(np.arange(300) / 3))
    np.savez(tmp_path / "with_rate.npz", signal=np.sin(np.arange(300) / 3), fs=50.0)
    run_predict(tmp_path, f"checkpoint={ckpt}", f"inputs={tmp_path}", "out_dir=out")
    rows = {r["recording"]: r for r in read_table(tmp_path / "out" / "recordings.csv")}
    assert rows["with_rate"]["status"] == "ok"
    assert rows["plain"]["status"] == "failed"
    assert "does not carry its sampling rate" in rows["plain"]["error"]


# --------------------------------------------------------------------------------- loss, embed


@pytest.mark.parametrize("mode", ["af", "beats", "loss", "embed"])
def test_every_mode_composes_and_is_checked(mode, tmp_path):
    from omegaconf import OmegaConf

    from heartgpt.inference.prediction import check_mode

    cfg = compose_config([f"mode={mode}", "checkpoint=x.zip", "inputs=.", f"paths.log_dir={tmp_path}"])
    settings = OmegaConf.to_container(cfg.mode, resolve=True)
    assert settings["name"] == mode
    check_mode(settings, 500)  # the defaults fit the released models' 500-sample window
    assert cfg.out_dir == f"{tmp_path}/predict/{mode}_x.zip"


def test_loss_and_embed_are_what_the_model_computes(tmp_path):
    lm = tiny_checkpoint(tmp_path, task="pretrain", out_features=None)
    model = load_model(lm).model.eval()
    rng = np.random.default_rng(1)
    signal_ = np.sin(np.arange(200) / 4) + 0.1 * rng.normal(size=200)
    np.save(tmp_path / "r.npy", signal_)
    common = [f"checkpoint={lm}", f"inputs={tmp_path / 'r.npy'}", "sample_rate=50"]
    run_predict(tmp_path, "mode=loss", *common, "out_dir=loss")
    run_predict(tmp_path, "mode=embed", *common, "out_dir=embed", "mode.stride=64")
    starts = [0, 64, 128, 136]  # back to back windows of 64, the last one aligned to the end
    tokens = torch.as_tensor(np.stack([tokenize_window(signal_[s : s + 64]) for s in starts]))
    with torch.no_grad():
        logits = model(tokens[:, :-1])
        expect = F.cross_entropy(logits.transpose(1, 2), tokens[:, 1:], reduction="none").mean(1)
        hidden = model.hidden(tokens).mean(dim=1)
    windows = read_table(tmp_path / "loss" / "windows.csv")
    assert [int(w["start_sample"]) for w in windows] == starts
    np.testing.assert_allclose([float(w["loss"]) for w in windows], expect.numpy(), rtol=1e-6)
    row = read_table(tmp_path / "loss" / "recordings.csv")[0]
    assert float(row["mean_loss"]) == pytest.approx(float(expect.double().mean()), rel=1e-6)
    assert float(row["perplexity"]) == pytest.approx(np.exp(float(row["mean_loss"])))
    with h5py.File(tmp_path / "embed" / "embeddings.h5") as f:
        np.testing.assert_allclose(f["embeddings"][:], hidden.numpy(), rtol=1e-5, atol=1e-6)
        assert f["start_sample"][:].tolist() == starts
        assert [n.decode() for n in f["recordings"][:]] == ["r"]
    rows = read_table(tmp_path / "embed" / "windows.csv")
    assert [int(r["embedding_row"]) for r in rows] == [0, 1, 2, 3]


def test_an_onnx_export_predicts_what_the_pytorch_model_predicts(tmp_path):
    """``checkpoint=<file>.onnx`` runs through onnxruntime: the same rows to 1e-5."""
    from heartgpt.model.export import export_onnx

    ckpt = tiny_checkpoint(tmp_path)
    onnx = export_onnx(load_model(ckpt), tmp_path / "tiny_af.onnx")
    data = tmp_path / "recordings"
    data.mkdir()
    for i in range(2):
        np.save(data / f"r{i}.npy", np.sin(np.arange(400) / (3 + i)) + np.arange(400) / 500)
    common = [f"inputs={data}", "sample_rate=50", "mode.stride=20"]
    run_predict(tmp_path, f"checkpoint={ckpt}", "out_dir=torch", *common)
    run_predict(tmp_path, f"checkpoint={onnx}", "out_dir=onnx", *common)
    ours, theirs = (read_table(tmp_path / d / "windows.csv") for d in ("onnx", "torch"))
    assert len(ours) == len(theirs) > 10
    np.testing.assert_allclose([float(w["af_prob"]) for w in ours],
                               [float(w["af_prob"]) for w in theirs], atol=1e-5)
    with pytest.raises(InputError, match="is an ONNX export: mode=embed"):
        run_predict(tmp_path, f"checkpoint={onnx}", "mode=embed", "out_dir=embed", *common[:2])
