"""Shard format: round trip, determinism, atomic writes and validation errors."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from heartgpt.data.shard_writer import ShardWriter
from heartgpt.data.shards import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    ShardError,
    ShardMeta,
    read_manifest,
    read_shards,
    validate_shard_dir,
    validate_shard_file,
)

S = 20


def _meta(label_kind: str = "sequence", modality: str = "ecg") -> ShardMeta:
    return ShardMeta(
        modality=modality, sample_rate=100.0, vocab_size=101, segment_length=S, label_kind=label_kind,
        source="unit test", tokenizer={"levels": 100},
    )


def _rows(n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "tokens": rng.integers(0, 101, (n, S)),
        "subject": [f"s{i % 4}" for i in range(n)],
        "record": [f"r{i // 2}" for i in range(n)],
        "start": np.arange(n) * S,
        "label": (np.arange(n) % 2).astype(np.float32),
        "targets": rng.integers(0, 2, (n, S)),
    }


def _write(out: Path, n: int = 25, rows_per_shard: int = 10, label_kind: str = "sequence", seed: int = 0):
    r = _rows(n, seed)
    with ShardWriter(out, _meta(label_kind), rows_per_shard) as w:
        w.add(r["tokens"], r["subject"], r["record"], r["start"],
              label=r["label"] if label_kind == "sequence" else None,
              targets=r["targets"] if label_kind == "token" else None)
    return r


def test_round_trip_and_manifest(tmp_path):
    r = _write(tmp_path / "s")
    m = validate_shard_dir(tmp_path / "s", modality="ecg", verify_checksums=True)
    assert [s.file for s in m.shards] == ["shard-00000.h5", "shard-00001.h5", "shard-00002.h5"]
    assert [s.rows for s in m.shards] == [10, 10, 5]
    assert m.total_rows == 25
    assert m.subjects == {"s0": 7, "s1": 6, "s2": 6, "s3": 6}
    assert m.label_counts == {"0": 13, "1": 12}
    data = read_shards(tmp_path / "s")
    np.testing.assert_array_equal(data.tokens, r["tokens"])
    assert data.tokens.dtype == np.uint8
    assert list(data.subject) == r["subject"] and list(data.record) == r["record"]
    np.testing.assert_array_equal(data.label, r["label"])
    assert data.targets is None
    with h5py.File(tmp_path / "s" / "shard-00000.h5") as f:
        for key in ("format_version", "modality", "sample_rate", "vocab_size", "segment_length",
                    "tokenizer", "source", "synthetic", "heartgpt_version", "label_kind"):
            assert key in f.attrs
        assert f.attrs["format_version"] == FORMAT_VERSION
        assert json.loads(f.attrs["tokenizer"]) == {"levels": 100}
        assert f["tokens"].chunks[1] == S  # chunked by rows


def test_token_shards_have_targets(tmp_path):
    r = _write(tmp_path / "t", label_kind="token")
    data = read_shards(tmp_path / "t")
    np.testing.assert_array_equal(data.targets, r["targets"])
    assert data.label is None


def test_writer_refuses_missing_label_and_bad_tokens(tmp_path):
    w = ShardWriter(tmp_path, _meta("sequence"), 10)
    with pytest.raises(ValueError, match="label"):
        w.add(np.zeros((2, S)), ["a", "a"], ["r", "r"], [0, 1])
    with pytest.raises(ValueError, match="outside"):
        w.add(np.full((2, S), 101), ["a", "a"], ["r", "r"], [0, 1], label=[0, 1])
    w.abort()


def test_same_rows_give_identical_bytes(tmp_path):
    _write(tmp_path / "a")
    _write(tmp_path / "b")
    ma, mb = read_manifest(tmp_path / "a"), read_manifest(tmp_path / "b")
    assert [s.sha256 for s in ma.shards] == [s.sha256 for s in mb.shards]
    for s in ma.shards:
        assert (tmp_path / "a" / s.file).read_bytes() == (tmp_path / "b" / s.file).read_bytes()
    assert (tmp_path / "a" / MANIFEST_NAME).read_text() == (tmp_path / "b" / MANIFEST_NAME).read_text()


def test_truncated_shard_is_named(tmp_path):
    _write(tmp_path / "s")
    bad = tmp_path / "s" / "shard-00001.h5"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ShardError, match=r"shard-00001\.h5.*truncated"):
        validate_shard_dir(tmp_path / "s")
    # Without the manifest's size, opening the file itself reports it.
    with pytest.raises(ShardError, match=r"shard-00001\.h5: truncated or corrupt HDF5"):
        validate_shard_file(bad)


def test_corruption_of_same_size_caught_by_checksum(tmp_path):
    _write(tmp_path / "s")
    path = tmp_path / "s" / "shard-00000.h5"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # inside the token data
    path.write_bytes(bytes(data))
    validate_shard_dir(tmp_path / "s")  # cheap checks cannot see it
    with pytest.raises(ShardError, match=r"shard-00000\.h5: sha256"):
        validate_shard_dir(tmp_path / "s", verify_checksums=True)


def test_damaged_metadata_of_the_same_size_is_a_shard_error(tmp_path):
    """Bytes of a dataset's header overwritten: h5py raises KeyError opening it; that is a
    corrupt file named as such, and with checksums on the sha256 says so before h5py reads."""
    _write(tmp_path / "s", n=25, rows_per_shard=10)
    path = tmp_path / "s" / "shard-00000.h5"
    data = bytearray(path.read_bytes())
    data[-200:-190] = bytes(10)
    path.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=r"shard-00000\.h5: truncated or corrupt HDF5 file"):
        validate_shard_dir(tmp_path / "s")
    with pytest.raises(ShardError, match=r"shard-00000\.h5: sha256"):
        validate_shard_dir(tmp_path / "s", verify_checksums=True)


def test_wrong_version_modality_label_kind(tmp_path):
    _write(tmp_path / "s")
    with pytest.raises(ShardError, match="'ecg' data but this run is 'ppg'"):
        validate_shard_dir(tmp_path / "s", modality="ppg")
    with pytest.raises(ShardError, match="'sequence' \\(label_kind\\)"):
        validate_shard_dir(tmp_path / "s", label_kind="token")
    path = tmp_path / "s" / "shard-00002.h5"
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = 99
    with pytest.raises(ShardError, match=r"shard-00002\.h5.*version 99"):
        validate_shard_dir(tmp_path / "s")
    man = tmp_path / "s" / MANIFEST_NAME
    d = json.loads(man.read_text())
    d["format_version"] = 99
    man.write_text(json.dumps(d))
    with pytest.raises(ShardError, match=r"manifest\.json: shard format version 99"):
        validate_shard_dir(tmp_path / "s")


def test_missing_manifest_and_stray_files(tmp_path):
    _write(tmp_path / "s")
    (tmp_path / "s" / "shard-00007.h5.partial").write_bytes(b"half a file")
    (tmp_path / "s" / "notes.txt").write_text("hi")
    validate_shard_dir(tmp_path / "s")  # strays are ignored
    (tmp_path / "s" / MANIFEST_NAME).unlink()
    with pytest.raises(ShardError, match=r"manifest\.json: missing.*incomplete"):
        validate_shard_dir(tmp_path / "s")
    with pytest.raises(ShardError, match="no such shard directory"):
        validate_shard_dir(tmp_path / "nope")


def test_failed_write_leaves_previous_content(tmp_path):
    _write(tmp_path / "s", seed=1)
    before = read_manifest(tmp_path / "s")
    with pytest.raises(RuntimeError), ShardWriter(tmp_path / "s", _meta(), 4) as w:
        r = _rows(9, seed=2)
        w.add(r["tokens"], r["subject"], r["record"], r["start"], label=r["label"])
        raise RuntimeError("killed")
    assert not list((tmp_path / "s").glob("*.partial"))
    assert validate_shard_dir(tmp_path / "s").shards == before.shards


def test_rerun_overwrites_cleanly(tmp_path):
    _write(tmp_path / "s", n=25, rows_per_shard=10)
    _write(tmp_path / "s", n=5, rows_per_shard=10, seed=3)
    assert sorted(p.name for p in (tmp_path / "s").glob("*.h5")) == ["shard-00000.h5"]
    assert validate_shard_dir(tmp_path / "s", verify_checksums=True).total_rows == 5


def test_empty_writer_refuses_to_commit(tmp_path):
    with pytest.raises(ShardError, match="no rows"):
        ShardWriter(tmp_path / "e", _meta(), 10).commit()
    assert not (tmp_path / "e" / MANIFEST_NAME).exists()
