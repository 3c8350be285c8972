"""prepare keeps its work: a killed or failed run resumes to the bytes of an uninterrupted one,
and parts prepared apart merge into the rows of one run (issue 18)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from heartgpt.conf import CONF_DIR
from hydra import compose, initialize_config_dir

import heartgpt.data.pipeline as pipeline
from heartgpt.data.journal import JOURNAL_NAME
from heartgpt.data.parts import part_slice
from heartgpt.data.shards import WORK_DIR, ShardError, read_shards, validate_shard_dir
from heartgpt.training.preparation import prepare

FS = 250
RECORDS = 30  # 5 segments each; shards of 7 rows end mid-record


def _cfg(tmp_path: Path, *overrides: str):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("prepare", overrides=[
            f"paths.data_dir={tmp_path / 'data'}", "progress=false", "segment.samples=200",
            f"input={tmp_path / 'raw'}", f"sample_rate={FS}", "rows_per_shard=7",
            "num_workers=1", *overrides,
        ])


def _recordings(root: Path, n: int = RECORDS) -> None:
    root.mkdir(parents=True)
    t = np.arange(10 * FS) / FS
    x = np.sin(2 * np.pi * 1.1 * t) ** 15 + 0.1 * np.sin(2 * np.pi * 0.3 * t)
    for i in range(n):
        np.save(root / f"r{i:03d}.npy", np.roll(x, 37 * i) * (1 + i / n))


def _files(d: Path) -> dict[str, bytes]:
    """Every file of a shard set (not the work folder) by name, as bytes."""
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


def _interrupt_at(monkeypatch, record: int) -> None:
    """Make reading record number ``record`` fail as a Ctrl-C would."""
    calls = {"n": 0}
    real = pipeline.process_file

    def process_file(rf, spec):
        if calls["n"] == record:
            raise KeyboardInterrupt
        calls["n"] += 1
        return real(rf, spec)

    monkeypatch.setattr(pipeline, "process_file", process_file)


@pytest.mark.parametrize("stop_at", [3, 11, 17])
def test_an_interrupted_prepare_resumes_to_the_same_bytes(tmp_path, monkeypatch, stop_at):
    _recordings(tmp_path / "raw")
    out = tmp_path / "out"
    prepare(_cfg(tmp_path, f"out_dir={out}"))
    reference = _files(out)
    for p in out.iterdir():
        p.unlink()

    with monkeypatch.context() as m:
        _interrupt_at(m, stop_at)
        with pytest.raises(KeyboardInterrupt):
            prepare(_cfg(tmp_path, f"out_dir={out}"))
    staged = sorted((out / WORK_DIR).glob("shard-*.h5"))
    assert len(staged) == stop_at * 5 // 7  # every shard filled before the stop was kept
    with pytest.raises(ShardError, match="incomplete"):
        validate_shard_dir(out)  # nothing half-done validates

    read: list[str] = []
    real = pipeline.process_file
    monkeypatch.setattr(pipeline, "process_file",
                        lambda rf, spec: read.append(rf.name) or real(rf, spec))
    summary = prepare(_cfg(tmp_path, f"out_dir={out}"))
    assert read[0] == f"r{len(staged) * 7 // 5:03d}"  # restarted at the first unfinished record
    assert len(read) == RECORDS - len(staged) * 7 // 5
    assert summary.records_read == RECORDS
    assert _files(out) == reference  # shards, row index, manifest and summary, byte for byte
    assert not (out / WORK_DIR).exists()


def test_changed_inputs_or_resume_false_start_afresh(tmp_path, monkeypatch):
    _recordings(tmp_path / "raw")
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        _interrupt_at(m, 12)
        with pytest.raises(KeyboardInterrupt):
            prepare(_cfg(tmp_path, f"out_dir={out}"))
    x = np.load(tmp_path / "raw" / "r000.npy")
    np.save(tmp_path / "raw" / "r000.npy", -x)  # an input changed: its staged rows are stale
    read: list[str] = []
    real = pipeline.process_file
    monkeypatch.setattr(pipeline, "process_file",
                        lambda rf, spec: read.append(rf.name) or real(rf, spec))
    prepare(_cfg(tmp_path, f"out_dir={out}"))
    assert len(read) == RECORDS
    fresh = tmp_path / "fresh"
    prepare(_cfg(tmp_path, f"out_dir={fresh}"))
    a, b = read_shards(out), read_shards(fresh)
    assert np.array_equal(a.tokens, b.tokens)

    with monkeypatch.context() as m:
        _interrupt_at(m, 12)
        with pytest.raises(KeyboardInterrupt):
            prepare(_cfg(tmp_path, f"out_dir={out}", "rows_per_shard=3"))
    read.clear()
    prepare(_cfg(tmp_path, f"out_dir={out}", "rows_per_shard=3", "resume=false"))
    assert len(read) == RECORDS


def test_a_damaged_staged_shard_is_made_again(tmp_path, monkeypatch):
    _recordings(tmp_path / "raw")
    out = tmp_path / "out"
    prepare(_cfg(tmp_path, f"out_dir={out}"))
    reference = _files(out)
    with monkeypatch.context() as m:
        _interrupt_at(m, 20)
        with pytest.raises(KeyboardInterrupt):
            prepare(_cfg(tmp_path, f"out_dir={out}"))
    third = out / WORK_DIR / "shard-00002.h5"
    damaged = bytearray(third.read_bytes())
    damaged[-200:-190] = bytes(10)  # same size, other bytes: only the sha256 tells
    third.write_bytes(bytes(damaged))
    prepare(_cfg(tmp_path, f"out_dir={out}"))
    assert _files(out) == reference


def test_parts_merge_into_the_rows_of_one_run(tmp_path):
    _recordings(tmp_path / "raw")
    one, split = tmp_path / "one", tmp_path / "split"
    prepare(_cfg(tmp_path, f"out_dir={one}"))
    for k in (1, 0, 2):  # any order, as a SLURM array finishes
        prepare(_cfg(tmp_path, f"out_dir={split}", f"part={k}", "nparts=3"))
    with pytest.raises(ShardError, match="incomplete"):
        validate_shard_dir(split)  # the parts are not a set until merged
    prepare(_cfg(tmp_path, f"out_dir={split}", "merge=true"))
    m = validate_shard_dir(split, verify_checksums=True)
    a, b = read_shards(one), read_shards(split)
    for name in ("tokens", "subject", "record", "start"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert m.num_subjects == RECORDS and m.subjects == validate_shard_dir(one).subjects
    summary = json.loads((split / "summary.json").read_text())
    assert summary["records_read"] == RECORDS and summary["parts"] == 3
    assert not list(split.glob("part-*"))  # merged parts are removed


def test_merge_names_a_missing_part(tmp_path):
    _recordings(tmp_path / "raw")
    split = tmp_path / "split"
    prepare(_cfg(tmp_path, f"out_dir={split}", "part=0", "nparts=2"))
    with pytest.raises(ShardError, match=r"part\(s\) \[1\] of 2 missing: run prepare part=1 nparts=2"):
        prepare(_cfg(tmp_path, f"out_dir={split}", "merge=true"))
    assert (split / "part-00000-of-00002" / "manifest.json").is_file()  # untouched


def test_part_slices_are_contiguous_and_cover_everything():
    items = list(range(10))
    parts = [part_slice(items, k, 3) for k in range(3)]
    assert [x for p in parts for x in p] == items and [len(p) for p in parts] == [3, 3, 4]
    with pytest.raises(ValueError, match="part must be in 0..2"):
        part_slice(items, 3, 3)


@pytest.mark.slow
def test_sigkilled_prepare_resumes_to_the_same_bytes(tmp_path):
    """The CLI killed with SIGKILL (no cleanup at all) after some shards were staged."""
    _recordings(tmp_path / "raw", n=300)
    out = tmp_path / "out"
    args = [sys.executable, "-m", "heartgpt.prepare", f"input={tmp_path / 'raw'}",
            f"sample_rate={FS}", "segment.samples=200", f"out_dir={out}", "rows_per_shard=4",
            "num_workers=1", "progress=false"]
    done = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    reference = _files(out)
    for p in out.iterdir():
        p.unlink()

    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = out / WORK_DIR / JOURNAL_NAME
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if journal.is_file() and journal.read_text().count('"shard"') >= 20:
                break
            time.sleep(0.001)
        assert proc.poll() is None, "prepare finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    staged = len(list((out / WORK_DIR).glob("shard-*.h5")))
    assert staged >= 20 and not (out / "manifest.json").exists()
    with pytest.raises(ShardError, match="incomplete"):
        validate_shard_dir(out)  # killed mid-run: nothing there validates
    again = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "resuming an interrupted run" in again.stderr
    assert _files(out) == reference
