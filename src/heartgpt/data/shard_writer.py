"""The atomic writer of shard sets (the format: :mod:`heartgpt.data.shards`).

Shards are staged in ``.prepare-work/`` (written as ``*.partial``, fsynced, renamed there) and
only moved in, the old shards removed and the manifest written once the whole run has
succeeded, so an interrupted run never leaves a directory that validates. Files carry no
timestamps: the same rows give byte-identical files and the same sha256 in the manifest.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from heartgpt.data.labels import LabelSchema
from heartgpt.data.row_index import INDEX_FILES, RowIndex, RowIndexBuilder
from heartgpt.data.shards import (
    MANIFEST_NAME,
    PARTIAL_SUFFIX,
    SHARD_GLOB,
    SUMMARY_NAME,
    WORK_DIR,
    Manifest,
    ShardError,
    ShardInfo,
    ShardMeta,
    add_shard_rows,
    index_label,
)
from heartgpt.files import sha256_file, write_json_atomic

_CHUNK_BYTES = 64 * 1024  # rows per HDF5 chunk ~ this many tokens: cheap random row reads


def _label_counts(label: np.ndarray | None, schema: LabelSchema | None) -> dict[str, int] | None:
    if label is None or schema is None or schema.kind != "class":
        return None  # values: counting them makes no sense
    values, counts = np.unique(label.astype(np.int64), return_counts=True)
    return {str(int(v)): int(n) for v, n in zip(values, counts, strict=True)}


def _write_h5(path: Path, meta: ShardMeta, rows: dict[str, np.ndarray], compression: str | None) -> None:
    """Write one shard file (no timestamps, so identical rows give identical bytes)."""
    n, s = rows["tokens"].shape
    chunk_rows = max(1, min(n, _CHUNK_BYTES // s))
    str_dt = h5py.string_dtype("utf-8")
    with h5py.File(path, "w", libver="earliest", track_order=False) as f:
        for key, value in meta.to_attrs().items():
            f.attrs[key] = value
        f.attrs["rows"] = n
        opts: dict[str, Any] = {"track_times": False}
        if compression:
            opts["compression"] = compression
        f.create_dataset("tokens", data=rows["tokens"], chunks=(chunk_rows, s), **opts)
        if "targets" in rows:
            targets = rows["targets"]
            f.create_dataset("targets", data=targets, chunks=(chunk_rows, targets.shape[1]), **opts)
        if "label" in rows:
            f.create_dataset("label", data=rows["label"], track_times=False)
        f.create_dataset("start", data=rows["start"], track_times=False)
        f.create_dataset("subject", data=rows["subject"].astype(object), dtype=str_dt, track_times=False)
        f.create_dataset("record", data=rows["record"].astype(object), dtype=str_dt, track_times=False)


class ShardWriter:
    """Collects rows and writes them as shards of ``rows_per_shard`` rows, atomically.

    Use as a context manager: leaving the block normally commits (moves the staged shards in,
    removes older shards, writes the row index and ``manifest.json`` last); leaving it with an
    exception removes what it staged and leaves the directory as it was.

    Shards are staged in ``<out_dir>/.prepare-work/`` as they fill. A resumable writer (what
    ``prepare`` makes, :mod:`heartgpt.data.journal`) is given the shards an earlier, killed run
    staged (``staged``) and told of each new one (``on_shard``); on an exception it keeps them.

    >>> with ShardWriter(out_dir, meta, rows_per_shard=4096) as w:  # doctest: +SKIP
    ...     w.add(tokens, subjects, records, starts, label=labels)
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        meta: ShardMeta,
        rows_per_shard: int,
        compression: str | None = None,
        *,
        staged: Sequence[tuple[Path, ShardInfo]] | None = None,
        on_shard: Callable[[ShardInfo, tuple[int, int]], None] | None = None,
    ) -> None:
        if rows_per_shard <= 0:
            raise ValueError(f"rows_per_shard must be positive, got {rows_per_shard}")
        self.out_dir = Path(out_dir)
        self.work_dir = self.out_dir / WORK_DIR
        self.meta = meta
        self.rows_per_shard = rows_per_shard
        self.compression = compression
        self.resumable = staged is not None
        self.on_shard = on_shard
        self._buf: dict[str, list[np.ndarray]] = {}
        self._origins: list[list[int]] = []  # [record, first row in it, rows] per buffered chunk
        self._buffered = 0
        self._staged: list[tuple[Path, ShardInfo]] = list(staged or [])
        self._index = RowIndexBuilder()
        self.manifest: Manifest | None = None
        if not self.resumable:
            shutil.rmtree(self.work_dir, ignore_errors=True)  # left by an interrupted run
        self.work_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.work_dir.glob(f"*{PARTIAL_SUFFIX}"):
            stale.unlink()
        for stale in self.out_dir.glob(f"*{PARTIAL_SUFFIX}"):
            stale.unlink()  # left by heartgpt <= 0.3, which staged shards beside the set
        # the index holds every row committed so far
        add_shard_rows(self._index, [path for path, _ in self._staged], meta.has_label)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    def add(
        self,
        tokens: np.ndarray,
        subject: Sequence[str],
        record: Sequence[str],
        start: np.ndarray,
        label: np.ndarray | None = None,
        targets: np.ndarray | None = None,
        origin: tuple[int, int] = (0, 0),
    ) -> None:
        """Append rows: ``tokens`` (n, S) in 0..vocab-1, one subject/record/start per row.

        ``origin`` is (record number, first row of that record) of these rows, for the
        journal of a resumable run: each staged shard reports where it ends.
        """
        tokens = np.asarray(tokens)
        n = len(tokens)
        if n == 0:
            return
        S = self.meta.segment_length
        if tokens.shape != (n, S):
            raise ValueError(f"tokens must have shape (n, {S}), got {tokens.shape}")
        if tokens.min() < 0 or tokens.max() >= self.meta.vocab_size:
            raise ValueError(f"tokens outside 0..{self.meta.vocab_size - 1}")
        rows = {
            "tokens": tokens.astype(np.uint8),
            "subject": np.asarray(subject, dtype=str).reshape(n),
            "record": np.asarray(record, dtype=str).reshape(n),
            "start": np.asarray(start, dtype=np.int64).reshape(n),
        }
        if self.meta.has_label:
            if label is None:
                raise ValueError("this shard set has a 'sequence' task: every row needs a label")
            rows["label"] = np.asarray(label, dtype=np.float32).reshape(self.meta.label_shape(n))
        if self.meta.has_targets:
            if targets is None:
                raise ValueError("this shard set has a 'token' task: every row needs targets")
            schema = self.meta.label_schema
            rows["targets"] = np.asarray(targets, dtype=schema.target_dtype).reshape(
                self.meta.targets_shape(n))
        for key, value in rows.items():
            self._buf.setdefault(key, []).append(value)
        self._origins.append([int(origin[0]), int(origin[1]), n])
        self._buffered += n
        while self._buffered >= self.rows_per_shard:
            self._flush(self.rows_per_shard)

    def _take_origins(self, n: int) -> tuple[int, int]:
        """Drop ``n`` rows from the buffered chunks' origins; (record, row) where they end."""
        end = (0, 0)
        while n:
            chunk = self._origins[0]
            used = min(n, chunk[2])
            end = (chunk[0], chunk[1] + used)
            chunk[1] += used
            chunk[2] -= used
            n -= used
            if not chunk[2]:
                self._origins.pop(0)
        return end

    def _flush(self, n: int) -> None:
        rows = {k: np.concatenate(v) for k, v in self._buf.items()}
        now = {k: v[:n] for k, v in rows.items()}
        self._buf = {k: [v[n:]] for k, v in rows.items()}
        self._buffered -= n
        end = self._take_origins(n)
        name = f"shard-{len(self._staged):05d}.h5"
        partial = self.work_dir / (name + PARTIAL_SUFFIX)
        _write_h5(partial, self.meta, now, self.compression)
        with open(partial, "rb+") as f:
            os.fsync(f.fileno())
        path = self.work_dir / name
        os.replace(partial, path)
        info = ShardInfo(file=name, rows=n, bytes=path.stat().st_size, sha256=sha256_file(path),
                         label_counts=_label_counts(now.get("label"), self.meta.label_schema))
        self._staged.append((path, info))
        self._index.add(now["subject"], index_label(now.get("label")))
        if self.on_shard is not None:
            self.on_shard(info, end)

    @property
    def pending_shards(self) -> int:
        """Shards this writer will have written once committed."""
        return len(self._staged) + (1 if self._buffered else 0)

    def commit(self, summary: dict[str, Any] | None = None) -> Manifest:
        """Write the last shard, replace the directory's old shards and write the manifest."""
        if self.manifest is not None:
            return self.manifest
        if self._buffered:
            self._flush(self._buffered)
        if not self._staged:
            self.discard()
            raise ShardError(f"{self.out_dir}: no rows to write (every record was skipped?)")
        self.manifest = commit_shard_set(self.out_dir, self.meta, self._staged,
                                         self._index.finish(), summary)
        shutil.rmtree(self.work_dir, ignore_errors=True)
        return self.manifest

    def abort(self) -> None:
        """Forget the buffered rows; remove what was staged unless this writer is resumable
        (then the staged shards wait for the next run). The directory's old content stays."""
        if self.resumable:
            for stale in self.work_dir.glob(f"*{PARTIAL_SUFFIX}"):
                stale.unlink()
        else:
            shutil.rmtree(self.work_dir, ignore_errors=True)
        self._buf, self._origins, self._buffered = {}, [], 0

    def discard(self) -> None:
        """Remove everything staged, resumable or not (a run with nothing to write)."""
        self.resumable = False
        self.abort()
        self._staged = []


def commit_shard_set(
    out_dir: Path,
    meta: ShardMeta,
    staged: Sequence[tuple[Path, ShardInfo]],
    index: RowIndex,
    summary: dict[str, Any] | None = None,
) -> Manifest:
    """Make ``out_dir`` the shard set of the ``staged`` files (moved in under their
    ``ShardInfo.file`` names, in order) with this row index; the old set's shards go.

    The manifest is removed first and written last: in between the directory does not validate.
    """
    if index.total_rows != sum(info.rows for _, info in staged):
        raise ShardError(f"{out_dir}: the row index holds {index.total_rows} rows, the shards "
                         f"{sum(info.rows for _, info in staged)}")
    index_paths = index.save(out_dir, suffix=PARTIAL_SUFFIX)
    index_info = {p.name.removesuffix(PARTIAL_SUFFIX): {"bytes": p.stat().st_size,
                                                        "sha256": sha256_file(p)}
                  for p in index_paths}
    manifest_path = out_dir / MANIFEST_NAME
    manifest_path.unlink(missing_ok=True)
    for old in [*out_dir.glob(SHARD_GLOB), *(out_dir / name for name in INDEX_FILES)]:
        old.unlink(missing_ok=True)
    for path, info in staged:
        os.replace(path, out_dir / info.file)
    for path in index_paths:
        os.replace(path, out_dir / path.name.removesuffix(PARTIAL_SUFFIX))
    manifest = Manifest(out_dir, meta, tuple(info for _, info in staged), index_info,
                        index.num_subjects)
    if summary is not None:
        write_json_atomic(out_dir / SUMMARY_NAME, summary)
    write_json_atomic(manifest_path, manifest.to_json())
    return manifest
