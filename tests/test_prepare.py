"""``prepare`` end to end on real files: shard contents against directly computed tokens,
labels, beat targets, skipped records, determinism and interrupted runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import wfdb
from heartgpt.conf import CONF_DIR
from hydra import compose, initialize_config_dir

from heartgpt.data.pipeline import beat_targets, resolve_workers
from heartgpt.data.shards import (
    MANIFEST_NAME,
    ShardError,
    read_manifest,
    read_shards,
    validate_shard_dir,
)
from heartgpt.data.tokenizer import resample, sliding_windows, tokenize_window
from heartgpt.errors import ConfigError
from heartgpt.training.config_checks import PREPARE_CHECKS, check_values
from heartgpt.training.preparation import prepare, prepare_spec

FS = 250  # Hz of the test recordings
CONF = CONF_DIR


def _cfg(tmp_path: Path, *overrides: str):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("prepare", overrides=[
            f"paths.data_dir={tmp_path / 'data'}", "progress=false", "segment.samples=200", *overrides,
        ])


def _ecg_like(seconds: float, seed: int, fs: float = FS) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * fs)) / fs
    return np.sin(2 * np.pi * 1.1 * t) ** 15 + 0.1 * np.sin(2 * np.pi * 0.3 * t) + 0.01 * rng.normal(size=t.size)


def _expected(x: np.ndarray, fs: float, length: int = 200, stride: int = 200, rate: float = 100.0):
    y = resample(x, fs, rate)
    return np.stack([tokenize_window(y[s : s + length]) for s in sliding_windows(y.size, length, stride)])


def _files(root: Path) -> dict[str, np.ndarray]:
    """One record per format; returns record name -> the channel prepare should pick."""
    root.mkdir(parents=True)
    sig = {n: _ecg_like(9, i) for i, n in enumerate(["c1", "n1", "z1", "m1", "w1"])}
    other = _ecg_like(9, 99)
    np.savetxt(root / "c1.csv", np.stack([other, sig["c1"]], 1), delimiter=",", header="II,I", comments="")
    np.save(root / "n1.npy", np.stack([sig["n1"], other], 1))
    np.savez(root / "z1.npz", signal=np.stack([other, sig["z1"]], 1), channel_names=["II", "I"], fs=FS)
    scipy.io.savemat(root / "m1.mat", {"signal": sig["m1"], "fs": float(FS), "channel_names": ["I"]})
    wfdb.wrsamp("w1", fs=FS, units=["mV", "mV"], sig_name=["II", "I"], fmt=["16", "16"],
                p_signal=np.stack([other, sig["w1"]], 1), write_dir=str(root))
    # wfdb stores 16-bit integers: compare with what it reads back
    sig["w1"] = wfdb.rdrecord(str(root / "w1"), channel_names=["I"]).p_signal[:, 0]
    return sig


def test_every_format_against_direct_tokens(tmp_path):
    sig = _files(tmp_path / "raw")
    # channel I by name (CSV header, npz channel_names, WFDB sig_name)
    cfg = _cfg(tmp_path, f"input={tmp_path / 'raw'}", "channel=I", f"sample_rate={FS}",
               f"out_dir={tmp_path / 'out'}", "rows_per_shard=7", "num_workers=2")
    summary = prepare(cfg)
    # .npy has no channel names: "I" is unreadable there, and that is reported, not fatal.
    assert summary.records_skipped == {"unreadable": 1}
    assert summary.skipped[0]["record"] == "n1" and "no channel named 'I'" in summary.skipped[0]["detail"]
    data = read_shards(tmp_path / "out", verify_checksums=True)
    assert data.meta.modality == "ecg" and data.meta.segment_length == 200
    for name in ["c1", "m1", "w1", "z1"]:
        rows = data.record == name
        np.testing.assert_array_equal(data.tokens[rows], _expected(sig[name], FS), err_msg=name)
        np.testing.assert_array_equal(data.start[rows], [0, 200, 400, 600][: rows.sum()])
        assert set(data.subject[rows]) == {name}
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["segments_written"] == len(data.tokens)


def test_ppg_rate_stride_labels_csv(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    x = {f"r{i}": _ecg_like(30, i, fs=125) for i in range(3)}
    for k, v in x.items():
        np.save(raw / f"{k}.npy", v)
    (raw / "labels.csv").write_text("record,subject,label\nr0,alice,1\nr1,alice,0\nr2,bob,1\n")
    cfg = _cfg(tmp_path, f"input={raw}", "modality=ppg", "label_kind=sequence", "sample_rate=125",
               f"labels_csv={raw / 'labels.csv'}", "segment.seconds=10", "segment.stride_seconds=2",
               f"out_dir={tmp_path / 'out'}", "num_workers=1")
    prepare(cfg)
    data = read_shards(tmp_path / "out")
    assert data.meta.sample_rate == 50 and data.meta.segment_length == 500
    for k, subject, label in [("r0", "alice", 1), ("r1", "alice", 0), ("r2", "bob", 1)]:
        rows = data.record == k
        np.testing.assert_array_equal(data.tokens[rows], _expected(x[k], 125, 500, 100, 50.0))
        assert set(data.subject[rows]) == {subject} and set(data.label[rows]) == {label}
    assert read_manifest(tmp_path / "out").label_counts == {"0": 11, "1": 22}


def test_beat_targets_from_wfdb_and_sidecar(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    x = _ecg_like(6, 1)
    beats = np.arange(37, x.size, 227)
    wfdb.wrsamp("w", fs=FS, units=["mV"], sig_name=["I"], fmt=["16"], p_signal=x[:, None], write_dir=str(raw))
    wfdb.wrann("w", "atr", beats, symbol=["N"] * len(beats), write_dir=str(raw))
    np.save(raw / "s.npy", x)
    (raw / "s_beats.csv").write_text("sample\n" + "\n".join(str(b + 1) for b in beats) + "\n")
    common = ["label_kind=token", f"sample_rate={FS}", "annotations.tolerance=1", "num_workers=1"]
    prepare(_cfg(tmp_path, f"input={raw}", "format=wfdb", "annotations.wfdb_extension=atr",
                 f"out_dir={tmp_path / 'w'}", *common))
    prepare(_cfg(tmp_path, f"input={raw}", "format=npy", "annotations.sidecar_suffix=_beats.csv",
                 "annotations.index_base=1", f"out_dir={tmp_path / 's'}", *common))
    full = beat_targets(beats, FS, 100.0, 600, tolerance=1)
    for out in ("w", "s"):
        data = read_shards(tmp_path / out)
        np.testing.assert_array_equal(data.targets, full.reshape(3, 200), err_msg=out)


def test_bad_records_are_skipped_and_reported(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    good = _ecg_like(5, 0)
    np.save(raw / "good.npy", good)
    np.save(raw / "nan.npy", np.full(2000, np.nan))
    np.save(raw / "flat.npy", np.ones(2000))
    np.save(raw / "short.npy", good[:300])  # 1.2 s -> 120 samples < 200
    (raw / "garbage.npy").write_bytes(b"this is not numpy")
    part = good.copy()
    part[100:200] = np.nan  # first segment NaN, the rest fine
    np.save(raw / "partial.npy", part)
    cfg = _cfg(tmp_path, f"input={raw}", f"sample_rate={FS}", f"out_dir={tmp_path / 'out'}", "num_workers=2")
    summary = prepare(cfg)
    assert summary.records_found == 6 and summary.records_read == 2
    assert summary.records_skipped == {"NaN/inf": 1, "flat": 1, "too short": 1, "unreadable": 1}
    assert summary.segments_skipped == {"NaN/inf": 4 + 1, "flat": 4}  # 8 s -> 4 segments
    assert {s["record"]: s["reason"] for s in summary.skipped} == {
        "nan": "NaN/inf", "flat": "flat", "short": "too short", "garbage": "unreadable"}
    data = read_shards(tmp_path / "out")
    assert (data.record == "partial").sum() == 1 and (data.record == "good").sum() == 2
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["records_skipped"] == summary.records_skipped


def test_all_records_bad_raises_after_summary(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    np.save(raw / "flat.npy", np.ones(2000))
    with pytest.raises(ShardError, match="no segment could be written"):
        prepare(_cfg(tmp_path, f"input={raw}", f"sample_rate={FS}", f"out_dir={tmp_path / 'out'}"))
    assert not (tmp_path / "out" / MANIFEST_NAME).exists()
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["records_skipped"] == {"flat": 1}


def test_rerun_is_identical_whatever_the_workers(tmp_path):
    _files(tmp_path / "raw")
    args = [f"input={tmp_path / 'raw'}", "channel=0", f"sample_rate={FS}", "rows_per_shard=5"]
    prepare(_cfg(tmp_path, *args, f"out_dir={tmp_path / 'a'}", "num_workers=1"))
    prepare(_cfg(tmp_path, *args, f"out_dir={tmp_path / 'b'}", "num_workers=2"))
    prepare(_cfg(tmp_path, *args, f"out_dir={tmp_path / 'b'}", "num_workers=2"))  # over itself
    a, b = read_manifest(tmp_path / "a"), read_manifest(tmp_path / "b")
    assert [s.sha256 for s in a.shards] == [s.sha256 for s in b.shards]
    assert (tmp_path / "a" / MANIFEST_NAME).read_bytes() == (tmp_path / "b" / MANIFEST_NAME).read_bytes()


def _cli(tmp_path: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "heartgpt.prepare", f"paths.data_dir={tmp_path / 'data'}", *args]


@pytest.mark.slow
def test_cli_runs_and_prints_summary(tmp_path):
    _files(tmp_path / "raw")
    out = subprocess.run(
        _cli(tmp_path, f"input={tmp_path / 'raw'}", "channel=0", f"sample_rate={FS}",
             "segment.samples=200", f"out_dir={tmp_path / 'out'}", "progress=false"),
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert "records read" in out.stdout and "segments written" in out.stdout
    validate_shard_dir(tmp_path / "out", verify_checksums=True)
    assert not (tmp_path / "outputs").exists()  # prepare leaves no Hydra run folder


def test_config_uses_the_training_modality_group(tmp_path):
    cfg = _cfg(tmp_path, "modality=ppg", "label_kind=token")
    assert cfg.modality.name == "ppg" and cfg.modality.vocab_size == 102
    assert cfg.out_dir == f"{tmp_path / 'data'}/shards/ppg/token"
    spec = prepare_spec(cfg)
    assert (spec.modality, spec.label_kind, spec.segment.length, spec.segment.stride) == ("ppg", "token", 200, 200)


def test_num_workers_auto_is_the_usable_cpus_and_a_bad_value_is_named(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path)
    assert cfg.num_workers == "auto"
    check_values(cfg, PREPARE_CHECKS)  # the default passes, so do counts
    check_values(_cfg(tmp_path, "num_workers=0"), PREPARE_CHECKS)
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert resolve_workers("auto") == usable >= 1
    assert (resolve_workers(0), resolve_workers(3)) == (0, 3)
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)  # macOS, Windows
    monkeypatch.setattr(os, "cpu_count", lambda: 7)
    assert resolve_workers("auto") == 7
    for value, shown in (("x", "'x'"), ("-1", "-1"), ("1.5", "1.5")):
        with pytest.raises(ConfigError) as e:
            check_values(_cfg(tmp_path, f"num_workers={value}"), PREPARE_CHECKS)
        assert str(e.value) == f"num_workers: {shown} is not an integer >= 0 or 'auto'"
