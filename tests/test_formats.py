"""Every recording format a user has gives the same tokens through ``prepare`` and the same
P(AF) through ``predict`` as the same signal saved as ``.npy``; every file that is not read is
a row with its reason in both, beside unchanged good recordings.

The signal is a 60-s SYNTHETIC ECG at 100 Hz on a 1-uV grid (digital value / 1000 mV), so every
format can hold it. Quantisation bound: float64 formats (CSV written with ``repr``, .npy, .mat)
must give identical tokens; 16-bit WFDB/EDF and 24-bit WFDB/BDF store digital values with a
gain of 1 uV, so a sample read back may differ by at most half a step (0.0005 mV), and a token
may then differ by at most 1 and only where the .npy sample's scaled value lies within
``100 * 0.0005 / (segment max - min)`` of a rounding boundary (x.5).
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import os
from pathlib import Path

import edfio
import h5py
import numpy as np
import pytest
import scipy.io
import wfdb
from heartgpt.conf import CONF_DIR
from hydra import compose, initialize_config_dir

from heartgpt.data.demo import NATIVE_RATE, draw_subjects, synthesize
from heartgpt.data.discovery import list_inputs
from heartgpt.data.readers import read_recording, read_signal_and_rate
from heartgpt.data.recording import RecordError, RecordFile
from heartgpt.data.shards import read_shards
from heartgpt.data.tokenizer import resample, sliding_windows
from heartgpt.training.preparation import prepare

RATE = 100.0  # Hz: ECG's modality rate (no resampling: the tokens are the file's samples)
SECONDS = 60
SEGMENT = 1000
STEP = 0.001  # mV per digital unit of the integer formats
FLOAT_FORMATS = {"csv", "csv_gz", "npy", "npy_gz", "npy_bz2", "mat5", "mat73", "row"}


def ecg_signal() -> np.ndarray:
    """60 s of a SYNTHETIC AF-like ECG at 100 Hz, rounded to the 1-uV grid (mV)."""
    subject = next(s for s in draw_subjects("ecg", 8, 0) if s.af)
    x = resample(synthesize(subject, "ecg", SECONDS).signal, NATIVE_RATE["ecg"], RATE)
    digital = np.round(x / STEP).astype(np.int64)
    assert np.abs(digital).max() < 32767
    return digital / 1000.0  # exactly what wfdb computes back from digital / gain


def write_mat73(path: Path, variables: dict[str, np.ndarray]) -> None:
    """A MATLAB v7.3 file as MATLAB writes it: HDF5 behind a 512-byte text block, each array
    stored with its dimensions reversed (column-major), class in ``MATLAB_class``."""
    with h5py.File(path, "w", userblock_size=512) as f:
        for name, value in variables.items():
            a = np.atleast_2d(np.asarray(value, dtype=np.float64))
            f.create_dataset(name, data=a.T).attrs["MATLAB_class"] = np.bytes_("double")
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Dec  7 2026 HDF5 schema 1.00 ."
    with open(path, "r+b") as f:
        f.write(header.ljust(128, b" "))


def write_all_formats(root: Path, x: np.ndarray) -> dict[str, str]:
    """The same signal in every format; returns record name -> format family."""
    root.mkdir(parents=True, exist_ok=True)
    text = "".join(f"{float(v)!r}\n" for v in x)
    (root / "csv.csv").write_text("ECG\r\n" + text.replace("\n", "\r\n"), encoding="utf-8-sig")
    (root / "csv_gz.csv.gz").write_bytes(gzip.compress(text.encode()))
    (root / "row.csv").write_text(",".join(repr(float(v)) for v in x) + "\n")  # one row of 6000 values
    np.save(root / "npy.npy", x)
    buf = io.BytesIO()
    np.save(buf, x)
    (root / "npy_gz.npy.gz").write_bytes(gzip.compress(buf.getvalue()))
    (root / "npy_bz2.npy.bz2").write_bytes(bz2.compress(buf.getvalue()))
    scipy.io.savemat(root / "mat5.mat", {"signal": x[:, None], "fs": RATE})
    write_mat73(root / "mat73.mat", {"signal": x[:, None], "fs": np.array([[RATE]])})
    digital = np.round(x / STEP).astype(np.int64)[:, None]
    for bits in ("16", "24"):
        wfdb.wrsamp(f"wfdb{bits}", fs=RATE, units=["mV"], sig_name=["ECG"], fmt=[bits],
                    d_signal=digital, adc_gain=[1000.0], baseline=[0], write_dir=str(root))
    pleth = np.sin(np.arange(SECONDS * 50) / 50 * 2 * np.pi * 1.2)  # a second signal at 50 Hz
    edfio.Edf([edfio.EdfSignal(x, RATE, label="ECG", physical_dimension="mV",
                               physical_range=(-32.768, 32.767), digital_range=(-32768, 32767)),
               edfio.EdfSignal(pleth, 50, label="Pleth", physical_dimension="au",
                               physical_range=(-1.0, 1.0))]).write(root / "edf.edf")
    edfio.Bdf([edfio.BdfSignal(x, RATE, label="ECG", physical_dimension="mV",
                               physical_range=(-8388.608, 8388.607))]).write(root / "bdf.bdf")
    return {"csv": "csv", "csv_gz": "csv", "row": "csv", "npy": "npy", "npy_gz": "npy",
            "npy_bz2": "npy", "mat5": "mat", "mat73": "mat", "wfdb16": "wfdb",
            "wfdb24": "wfdb", "edf": "edf", "bdf": "edf"}


def write_unsupported(root: Path) -> dict[str, str]:
    """One file of each kind that is not a recording; returns name -> words of its reason."""
    (root / "notes.txt").write_text("These recordings were taken on the ward.\nAsk Ann.\n")
    (root / "data.xyz").write_bytes(b"\x00\x01binary")
    (root / "lonely.hea").write_text("lonely 1 100 6000\nlonely.dat 16 1000/mV 16 0 0 0 0 ECG\n")
    (root / "empty.edf").write_bytes(b"")
    return {"notes": "not a number", "data.xyz": "unsupported format .xyz",
            "lonely": "without its signal file(s) lonely.dat", "empty": "empty file (0 bytes)"}


def prepare_cfg(tmp_path: Path, *overrides: str):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("prepare", overrides=[
            f"paths.data_dir={tmp_path / 'data'}", "progress=false", "num_workers=1",
            "sample_rate=100", f"segment.samples={SEGMENT}", *overrides])


def tokens_by_record(shard_dir: Path) -> dict[str, np.ndarray]:
    data = read_shards(shard_dir)
    return {str(r): data.tokens[data.record == r] for r in np.unique(data.record)}


def boundary_mask(x: np.ndarray, half_step: float) -> np.ndarray:
    """(segments, SEGMENT) True where a read-back error of ``half_step`` could move a sample's
    scaled value across a rounding boundary: the only tokens allowed to differ."""
    out = []
    for s in sliding_windows(x.size, SEGMENT, SEGMENT):
        w = x[s : s + SEGMENT]
        scaled = (w - w.min()) / (w.max() - w.min()) * 100
        slack = 2 * 100 * half_step / (w.max() - w.min()) + 1e-9  # the sample and min/max move
        out.append(np.abs(scaled - np.floor(scaled) - 0.5) <= slack)
    return np.stack(out)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> tuple[Path, dict[str, str], np.ndarray]:
    root = tmp_path_factory.mktemp("formats")
    x = ecg_signal()
    return root, write_all_formats(root / "good", x), x


def check_same_tokens(tokens: dict[str, np.ndarray], names: dict[str, str],
                      x: np.ndarray) -> None:
    ref = tokens["npy"]
    assert ref.shape == (SECONDS * RATE // SEGMENT, SEGMENT)
    may_differ = boundary_mask(x, STEP / 2)
    for name in names:
        got = tokens[name]
        assert got.shape == ref.shape, name
        diff = got.astype(int) - ref.astype(int)
        if name in FLOAT_FORMATS:
            assert not diff.any(), f"{name}: {np.count_nonzero(diff)} tokens differ"
        else:
            assert np.abs(diff).max() <= 1, name
            assert not (diff.astype(bool) & ~may_differ).any(), f"{name}: beyond quantisation"


def test_every_format_gives_the_npy_tokens_through_prepare(folder, tmp_path):
    root, names, x = folder
    summary = prepare(prepare_cfg(tmp_path, f"input={root / 'good'}", "channel=0",
                                  f"out_dir={tmp_path / 'shards'}"))
    assert summary.records_read == len(names) and not summary.skipped, summary.skipped
    tokens = tokens_by_record(tmp_path / "shards")
    assert sorted(tokens) == sorted(names)
    check_same_tokens(tokens, names, x)


def test_formats_read_their_own_rate_channel_and_orientation(folder):
    root, _, x = folder
    good = root / "good"
    for name, fmt in (("edf.edf", "edf"), ("bdf.bdf", "edf"), ("mat73.mat", "mat")):
        rec = read_recording(RecordFile(name, good / name, fmt), 0, sample_rate=None)
        assert rec.sample_rate == RATE, name  # the file's own rate, none given
        np.testing.assert_allclose(rec.signal, x, atol=STEP / 2 + 1e-12, err_msg=name)
    pleth = read_recording(RecordFile("edf", good / "edf.edf", "edf"), "pleth", 100.0)
    assert pleth.sample_rate == 50.0 and pleth.signal.size == SECONDS * 50  # its own rate
    with pytest.raises(RecordError, match=r"no channel named 'SpO2' \(channels: \['ECG', 'Pleth'\]"):
        read_recording(RecordFile("edf", good / "edf.edf", "edf"), "SpO2", None)
    with pytest.raises(RecordError, match=r"2 signals \(ECG, Pleth\): choose one"):
        read_signal_and_rate(good / "edf.edf")
    signal, rate = read_signal_and_rate(good / "edf.edf", channel="ECG")
    assert rate == RATE and signal.size == x.size
    # a v7.3 (channels, samples) matrix keeps MATLAB's orientation: 'val' is read transposed
    write_mat73(good.parent / "val73.mat", {"val": np.stack([x, -x])})
    v = read_recording(RecordFile("val73", good.parent / "val73.mat", "mat"), 1, RATE)
    np.testing.assert_array_equal(v.signal, -x)


def test_a_few_rows_of_many_values_are_refused_saying_so(tmp_path):
    x = ecg_signal()[:600]
    p = tmp_path / "rows.csv"
    np.savetxt(p, np.stack([x, -x, x]), delimiter=",")
    with pytest.raises(RecordError, match=r"3 row\(s\) of 600 values: the samples run along "
                                          r"the rows .* transpose it"):
        read_recording(RecordFile("rows", p, "csv"), 0, RATE)
    one = tmp_path / "one.csv"
    one.write_text(",".join(repr(float(v)) for v in x))
    with pytest.raises(RecordError, match="channel 1 out of range"):
        read_recording(RecordFile("one", one, "csv"), 1, RATE)


def test_unread_files_are_rows_with_their_reason_in_prepare(folder, tmp_path):
    root, names, x = folder
    mixed = tmp_path / "mixed"
    os_copy(root / "good", mixed)
    reasons = write_unsupported(mixed)
    (mixed / ".DS_Store").write_bytes(b"\x00")
    (mixed / "README.md").write_text("what these are\n")
    listing = list_inputs(mixed)
    assert listing.left_out == {"hidden files": 1,
                                "documentation/index files (README, LICENSE, RECORDS...)": 1}
    summary = prepare(prepare_cfg(tmp_path, f"input={mixed}", "channel=0",
                                  f"out_dir={mixed / 'shards'}"))  # its outputs inside: left out
    skipped = {s["record"]: f"{s['reason']}: {s['detail']}" for s in summary.skipped}
    assert sorted(skipped) == sorted(reasons)
    for name, words in reasons.items():
        assert words in skipped[name], (name, skipped[name])
    assert summary.records_skipped == {"not a recording": 1, "unreadable": 3}
    assert summary.records_read == len(names)
    check_same_tokens(tokens_by_record(mixed / "shards"), names, x)
    again = list_inputs(mixed, exclude_dirs=[mixed / "shards"])
    assert again.left_out["files of heartgpt's outputs"] >= 2  # manifest, shards, summary


def os_copy(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True)
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())


def read_table(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as f:
        return {r["recording"]: r for r in csv.DictReader(f)}


@pytest.mark.shared
@pytest.mark.slow
def test_every_format_gives_the_same_af_probability_through_predict(folder, weights_dir,
                                                                    tmp_path):
    from heartgpt.inference.predictor import predict
    from heartgpt.predict import compose_config

    root, names, _ = folder
    mixed = tmp_path / "mixed"
    os_copy(root / "good", mixed)
    reasons = write_unsupported(mixed)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        summary = predict(compose_config([
            "trainer.enable_progress_bar=false", f"checkpoint={weights_dir / 'ECGPT_AF_1k_iters.zip'}",
            f"inputs={mixed}", "sample_rate=100", "channel=0", "mode.stride=500", "out_dir=af"]))
    finally:
        os.chdir(cwd)
    rows = read_table(tmp_path / "af" / "recordings.csv")
    assert sorted(rows) == sorted([*names, *reasons])
    for name, words in reasons.items():
        assert rows[name]["status"] == "failed" and words in rows[name]["error"], rows[name]
    assert summary["failed"] == len(reasons) and summary["not_recordings"] == 1
    ref = float(rows["npy"]["recording_af_prob"])
    assert 0.0 < ref < 1.0
    for name in names:
        assert rows[name]["status"] == "ok", rows[name]
        assert abs(float(rows[name]["recording_af_prob"]) - ref) <= 1e-3, name


@pytest.mark.shared
@pytest.mark.slow
def test_the_tools_read_an_edf_signal_by_label_at_its_own_rate(folder, weights_dir, tmp_path):
    from heartgpt.screen_af import main as screen_af_main

    root, _, _ = folder
    ckpt = str(weights_dir / "ECGPT_AF_1k_iters.zip")
    common = ["--checkpoint", ckpt, "--out-dir", str(tmp_path)]
    assert screen_af_main([str(root / "good" / "npy.npy"), "--sample-rate", "100", *common]) == 0
    # the EDF's own 100 Hz, not --sample-rate 50; the ECG among two signals by its label
    assert screen_af_main([str(root / "good" / "edf.edf"), "--channel", "ECG",
                           "--sample-rate", "50", *common]) == 0
    npy = json.loads((tmp_path / "npy_af.json").read_text())
    edf = json.loads((tmp_path / "edf_af.json").read_text())
    assert abs(edf["recording_af_prob"] - npy["recording_af_prob"]) <= 1e-3
    assert edf["n_windows"] == npy["n_windows"]


def test_links_truncated_wfdb_and_what_is_left_out_said_once(folder, tmp_path):
    root, _, _ = folder
    d = tmp_path / "in"
    d.mkdir()
    for name in ("wfdb16.hea", "wfdb16.dat"):
        (d / name).write_bytes((root / "good" / name).read_bytes())
    dat = d / "wfdb16.dat"
    dat.write_bytes(dat.read_bytes()[: dat.stat().st_size // 2])  # truncated
    os.symlink(d / "self.csv", d / "self.csv")  # a link to itself
    os.symlink(d, d / "loop")  # a folder link back to the folder: not followed
    (d / ".hidden").mkdir()
    (d / ".hidden" / "x.csv").write_text("1\n2\n")
    listing = list_inputs(d)
    assert listing.left_out == {"links to folders (not followed)": 1, "hidden files": 1}
    assert listing.note() == ("left out (not recordings): 1 hidden files, "
                              "1 links to folders (not followed)")
    rows = {r.name: r for r in listing.records}
    assert sorted(rows) == ["self.csv", "wfdb16"]
    assert "leads to no file" in rows["self.csv"].problem
    with pytest.raises(RecordError, match="wfdb16.hea: cannot read as a WFDB record"):
        read_recording(rows["wfdb16"], 0)
    with pytest.raises(RecordError, match="leads to no file"):
        read_recording(rows["self.csv"], 0, RATE)
