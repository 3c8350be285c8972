"""HDF5 shards of tokenised segments: the format and a validating reader (the atomic writer is
:mod:`heartgpt.data.shard_writer`).

A shard directory holds ``shard-00000.h5``, ``shard-00001.h5``, ... and a ``manifest.json``
written last. Each shard has one row per fixed-length segment:

- ``tokens``  uint8 [N, S]   tokens 0..100, chunked by rows
- ``subject`` str   [N]      who the segment comes from (splits are by subject)
- ``record``  str   [N]      the recording it was cut from
- ``start``   int64 [N]      first sample of the segment in the resampled recording
- ``label``   float32 [N] or [N, L]  optional, sequence task (e.g. AF 0/1; L named columns)
- ``targets`` uint8 or float32 [N, S // stride]  optional, per-token task (e.g. 1 at each beat)

and attributes describing the data (:class:`ShardMeta`), the labels among them
(:class:`~heartgpt.data.labels.LabelSchema`: names, classes or values, class mapping, stride).
Beside them, the row index
(:mod:`heartgpt.data.row_index`: each row's subject and label as runs, two small ``.npy`` files)
lets a DataModule open 200 M rows in memory that grows with subjects, not rows. See
``data/README.md``.

Writing is atomic: shards are staged in ``.prepare-work/`` (written as ``*.partial``, fsynced,
renamed there) and only moved in, the old shards removed and the manifest written once the
whole run has succeeded, so an interrupted run never leaves a directory that validates. Files
carry no timestamps: the same rows give byte-identical files and the same sha256 in the
manifest.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

import heartgpt
from heartgpt.data.labels import LabelSchema
from heartgpt.data.row_index import INDEX_FILES, RowIndex, RowIndexBuilder
from heartgpt.errors import UserError
from heartgpt.files import sha256_file

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SUMMARY_NAME = "summary.json"
SHARD_GLOB = "shard-*.h5"
PARTIAL_SUFFIX = ".partial"
WORK_DIR = ".prepare-work"  # staged shards (and prepare's journal) until the set is committed
LABEL_KINDS = ("unlabelled", "sequence", "token")
_LEGACY_LABEL_KINDS = {"pretrain": "unlabelled"}  # heartgpt 0.1 stored label_kind as `task`


class ShardError(UserError):
    """A shard file or directory is missing, corrupt or does not match what was asked for."""


def _label_kind(attrs: dict[str, Any]) -> str:
    """``label_kind`` of stored attributes; older shards call it ``task`` ('pretrain': unlabelled)."""
    if "label_kind" in attrs:
        return str(attrs["label_kind"])
    legacy = str(attrs["task"])
    return _LEGACY_LABEL_KINDS.get(legacy, legacy)


@dataclass(frozen=True)
class ShardMeta:
    """What every shard of a directory says about its rows (stored as HDF5 attributes)."""

    modality: str  # 'ecg' | 'ppg'
    sample_rate: float  # Hz of the tokenised signal
    vocab_size: int
    segment_length: int  # S: tokens per row
    label_kind: str  # 'unlabelled' (tokens only) | 'sequence' (+ label) | 'token' (+ targets)
    source: str  # free text: where the rows come from ("SYNTHETIC ..." for demo data)
    synthetic: bool = False
    tokenizer: dict[str, Any] = field(default_factory=dict)  # settings used to make tokens
    labels: dict[str, Any] = field(default_factory=dict)  # LabelSchema.to_dict(); {}: legacy
    format_version: int = FORMAT_VERSION
    heartgpt_version: str = heartgpt.__version__

    def __post_init__(self) -> None:
        if self.label_kind not in LABEL_KINDS:
            raise ValueError(f"label_kind must be one of {LABEL_KINDS}, got {self.label_kind!r}")
        if self.segment_length <= 0:
            raise ValueError(f"segment_length must be positive, got {self.segment_length}")
        if self.labels and self.label_kind == "unlabelled":
            raise ValueError("an unlabelled shard set has no label schema")
        schema = self.label_schema  # raises on a malformed schema
        if schema is not None and schema.stride > self.segment_length:
            raise ValueError(f"target stride {schema.stride} is longer than a segment "
                             f"({self.segment_length} tokens)")

    @property
    def label_schema(self) -> LabelSchema | None:
        """What the labels are (None: unlabelled); sets written before the schema get
        :meth:`LabelSchema.legacy`."""
        if self.labels:
            return LabelSchema.from_dict(self.labels)
        return LabelSchema.legacy(self.label_kind)

    def label_shape(self, n: int) -> tuple[int, ...]:
        """Shape of ``label`` for ``n`` rows: (n,) for one column, (n, L) for several."""
        schema = self.label_schema
        return (n,) if schema is None or schema.width == 1 else (n, schema.width)

    def targets_shape(self, n: int) -> tuple[int, int]:
        """Shape of ``targets`` for ``n`` rows: one per whole ``stride`` tokens (a last part
        chunk has none)."""
        schema = self.label_schema
        return (n, self.segment_length // (schema.stride if schema else 1))

    @property
    def has_label(self) -> bool:
        return self.label_kind == "sequence"

    @property
    def has_targets(self) -> bool:
        return self.label_kind == "token"

    def to_attrs(self) -> dict[str, Any]:
        d = asdict(self)
        d["tokenizer"] = json.dumps(self.tokenizer, sort_keys=True)
        if self.labels:
            d["labels"] = json.dumps(self.labels, sort_keys=True)
        else:
            del d["labels"]  # sets without a schema keep their attributes byte for byte
        return d

    @classmethod
    def from_mapping(cls, d: dict[str, Any]) -> ShardMeta:
        d = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in d.items()}
        tok = d.get("tokenizer", "{}")
        labels = d.get("labels") or {}
        return cls(
            modality=str(d["modality"]),
            sample_rate=float(d["sample_rate"]),
            vocab_size=int(d["vocab_size"]),
            segment_length=int(d["segment_length"]),
            label_kind=_label_kind(d),
            source=str(d["source"]),
            synthetic=bool(d.get("synthetic", False)),
            tokenizer=json.loads(tok) if isinstance(tok, str) else dict(tok),
            labels=json.loads(labels) if isinstance(labels, str) else dict(labels),
            format_version=int(d["format_version"]),
            heartgpt_version=str(d.get("heartgpt_version", "")),
        )


@dataclass(frozen=True)
class ShardInfo:
    """One shard as the manifest lists it."""

    file: str  # name inside the shard directory
    rows: int
    bytes: int
    sha256: str
    label_counts: dict[str, int] | None = None  # label value -> rows (sequence task, integer labels)
    subjects: dict[str, int] | None = None  # manifests before the row index: subject -> rows


@dataclass(frozen=True)
class Manifest:
    """The validated content of a shard directory's ``manifest.json``."""

    directory: Path
    meta: ShardMeta
    shards: tuple[ShardInfo, ...]
    index: dict[str, dict[str, Any]] | None = None  # row-index file -> {bytes, sha256}
    num_subjects: int | None = None

    @property
    def paths(self) -> list[Path]:
        return [self.directory / s.file for s in self.shards]

    @property
    def total_rows(self) -> int:
        return sum(s.rows for s in self.shards)

    @functools.cached_property
    def row_index(self) -> RowIndex:
        """Each row's subject and label (memory-mapped; a set written before the index
        existed has it built from its shards' columns, in memory that grows with rows)."""
        if self.index is None:
            return _index_from_shards(self.paths, self.meta.has_label)
        try:
            return RowIndex.load(self.directory, self.total_rows)
        except (OSError, ValueError) as e:
            raise ShardError(f"{self.directory}: damaged row index ({e}); re-run prepare") from e

    @property
    def subjects(self) -> dict[str, int]:
        """subject -> rows (a dict of every subject: for small sets and reports)."""
        index = self.row_index
        return dict(zip(index.names(), index.rows_per_subject().tolist(), strict=True))

    @property
    def label_counts(self) -> dict[str, int] | None:
        schema = self.meta.label_schema
        if not self.meta.has_label or schema is None or schema.kind != "class":
            return None
        c: Counter[str] = Counter()
        for s in self.shards:
            c.update(s.label_counts or {})
        return dict(sorted(c.items()))

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": self.meta.format_version,
            "meta": asdict(self.meta),
            "total_rows": self.total_rows,
            "num_subjects": self.num_subjects,
            "label_counts": self.label_counts,
            "index": self.index,
            "shards": [{k: v for k, v in asdict(s).items() if k != "subjects"} for s in self.shards],
        }


def _index_from_shards(paths: Sequence[Path], with_labels: bool) -> RowIndex:
    builder = RowIndexBuilder()
    add_shard_rows(builder, paths, with_labels)
    return builder.finish()


def add_shard_rows(builder: RowIndexBuilder, paths: Sequence[Path], with_labels: bool) -> None:
    """Give ``builder`` the subject (and label) of every row of the shard files ``paths``."""
    for path in paths:
        label = read_column(path, "label") if with_labels else None
        builder.add(read_column(path, "subject"), index_label(label))


def index_label(label: np.ndarray | None) -> np.ndarray | None:
    """The label the row index keeps: the first column of several (for splits and reports)."""
    return label[:, 0] if label is not None and label.ndim == 2 else label


# --------------------------------------------------------------------------------- reading


def read_manifest(shard_dir: str | os.PathLike) -> Manifest:
    """Parse ``<shard_dir>/manifest.json`` (no file checks; see :func:`validate_shard_dir`)."""
    shard_dir = Path(shard_dir)
    path = shard_dir / MANIFEST_NAME
    if not shard_dir.is_dir():
        raise ShardError(f"{shard_dir}: no such shard directory (run `python -m heartgpt.prepare`)")
    if not path.is_file():
        raise ShardError(
            f"{path}: missing; the shards in {shard_dir} are incomplete (an interrupted or failed "
            "prepare?) - run `python -m heartgpt.prepare` again"
        )
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        version = int(d["format_version"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ShardError(f"{path}: unreadable manifest ({e})") from e
    if version != FORMAT_VERSION:
        raise ShardError(
            f"{path}: shard format version {version}, this heartgpt reads version {FORMAT_VERSION}"
            " - re-run `python -m heartgpt.prepare`"
        )
    try:
        meta = ShardMeta.from_mapping(d["meta"])
        shards = tuple(ShardInfo(**s) for s in d["shards"])
        index = d.get("index")  # None: written before the row index (built from the shards)
        if index is not None and set(index) != set(INDEX_FILES):
            raise ValueError(f"index lists {sorted(index)}, expected {list(INDEX_FILES)}")
        num_subjects = d.get("num_subjects")
    except (KeyError, TypeError, ValueError) as e:
        raise ShardError(f"{path}: malformed manifest ({e})") from e
    if not shards:
        raise ShardError(f"{path}: lists no shard files")
    return Manifest(shard_dir, meta, shards, index, num_subjects)


def _check_meta(path: Path, found: ShardMeta, expected: ShardMeta) -> None:
    for key in ("format_version", "modality", "sample_rate", "vocab_size", "segment_length", "label_kind",
                "labels"):
        a, b = getattr(found, key), getattr(expected, key)
        if a != b:
            raise ShardError(f"{path}: attribute {key}={a!r} but the manifest says {b!r}")


def validate_shard_file(
    path: str | os.PathLike,
    info: ShardInfo | None = None,
    meta: ShardMeta | None = None,
    verify_checksum: bool = False,
) -> ShardMeta:
    """Check one shard file's size, schema and attributes (and sha256 if asked).

    ``info``/``meta`` are what the manifest says; without them only the file itself is checked.
    Raises :class:`ShardError` naming the file.
    """
    path = Path(path)
    if info is None and not path.is_file():
        raise ShardError(f"{path}: shard file missing")
    if info is not None:
        _check_size(path, info.bytes)
    if verify_checksum and info is not None:  # before h5py reads what may be damaged metadata
        digest = sha256_file(path)
        if digest != info.sha256:
            raise ShardError(f"{path}: sha256 {digest[:12]}... differs from the manifest's {info.sha256[:12]}...")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ShardError(f"{path}: truncated or corrupt HDF5 file ({e})") from e
    try:
        with f:
            try:
                found = ShardMeta.from_mapping(dict(f.attrs))
            except (KeyError, ValueError, TypeError) as e:
                raise ShardError(f"{path}: missing or bad shard attributes ({e})") from e
            if found.format_version != FORMAT_VERSION:
                raise ShardError(
                    f"{path}: shard format version {found.format_version}, this heartgpt reads "
                    f"version {FORMAT_VERSION}"
                )
            if meta is not None:
                _check_meta(path, found, meta)
            _check_datasets(path, f, found, info)
    except (OSError, KeyError) as e:  # h5py's errors for corrupt metadata (a dataset present
        # by name whose header does not read is a KeyError)
        raise ShardError(f"{path}: truncated or corrupt HDF5 file ({e})") from e
    return found


def _check_size(path: Path, expected: int, what: str = "shard file", fix: str = "") -> None:
    """``path`` exists and has the ``expected`` size the manifest gives."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ShardError(f"{path}: {what} missing{fix}") from None
    if size != expected:
        raise ShardError(
            f"{path}: {size} bytes but the manifest says {expected} (truncated or rewritten)"
        )


def _check_datasets(path: Path, f: h5py.File, meta: ShardMeta, info: ShardInfo | None) -> None:
    if "tokens" not in f:
        raise ShardError(f"{path}: no 'tokens' dataset")
    tokens = f["tokens"]
    if tokens.dtype != np.uint8 or tokens.ndim != 2 or tokens.shape[1] != meta.segment_length:
        raise ShardError(
            f"{path}: 'tokens' is {tokens.dtype} {tokens.shape}, expected uint8 (N, {meta.segment_length})"
        )
    n = tokens.shape[0]
    if info is not None and n != info.rows:
        raise ShardError(f"{path}: {n} rows but the manifest says {info.rows}")
    wanted = {"subject": (n,), "record": (n,), "start": (n,)}
    if meta.has_label:
        wanted["label"] = meta.label_shape(n)
    if meta.has_targets:
        wanted["targets"] = meta.targets_shape(n)
    for name, shape in wanted.items():
        if name not in f:
            raise ShardError(f"{path}: no {name!r} dataset (label_kind {meta.label_kind!r} needs it)")
        if f[name].shape != shape:
            raise ShardError(f"{path}: {name!r} has shape {f[name].shape}, expected {shape}")


def validate_shard_dir(
    shard_dir: str | os.PathLike,
    modality: str | None = None,
    label_kind: str | Sequence[str] | None = None,
    verify_checksums: bool = False,
    open_files: bool = True,
) -> Manifest:
    """Read the manifest and check every shard it lists; return the :class:`Manifest`.

    Cheap checks (existence, size, schema, row counts, attributes against the manifest) always
    run; ``verify_checksums`` also hashes every file. ``modality``/``label_kind`` are what the run
    expects. Stray files (``*.partial`` from an interrupted run, anything not listed) are
    ignored. Raises :class:`ShardError` naming the bad file.

    ``open_files=False`` checks each file's existence and size only (a ``stat``: 16 M rows in
    4 k shards in milliseconds, where opening each takes seconds); the reader then checks each
    file's schema when it first opens it (:class:`heartgpt.data.windows.ShardRows`).
    """
    manifest = read_manifest(shard_dir)
    where = Path(shard_dir) / MANIFEST_NAME
    if modality is not None and manifest.meta.modality != modality.lower():
        raise ShardError(
            f"{where}: shards hold {manifest.meta.modality!r} data but this run is {modality!r}"
        )
    if label_kind is not None:
        allowed = (label_kind,) if isinstance(label_kind, str) else tuple(label_kind)
        if manifest.meta.label_kind not in allowed:
            raise ShardError(f"{where}: shards are {manifest.meta.label_kind!r} (label_kind), "
                             f"this run needs {allowed}")
    for path, info in zip(manifest.paths, manifest.shards, strict=True):
        if open_files or verify_checksums:
            validate_shard_file(path, info, manifest.meta, verify_checksum=verify_checksums)
        else:
            _check_size(path, info.bytes)
    for name, info in (manifest.index or {}).items():
        _check_index_file(Path(shard_dir) / name, info, verify_checksums)
    return manifest


def _check_index_file(path: Path, info: dict[str, Any], verify_checksum: bool) -> None:
    _check_size(path, info["bytes"], "row index file", " (re-run prepare)")
    if verify_checksum and sha256_file(path) != info["sha256"]:
        raise ShardError(f"{path}: sha256 differs from the manifest's")


@dataclass
class ShardData:
    """All rows of a shard directory in memory (for tests, tools and small sets)."""

    meta: ShardMeta
    tokens: np.ndarray  # (N, S) uint8
    subject: np.ndarray  # (N,) str
    record: np.ndarray  # (N,) str
    start: np.ndarray  # (N,) int64
    label: np.ndarray | None = None  # (N,) float32
    targets: np.ndarray | None = None  # (N, S) uint8


def read_shards(shard_dir: str | os.PathLike, verify_checksums: bool = False) -> ShardData:
    """Validate a shard directory and load all its rows in manifest order."""
    manifest = validate_shard_dir(shard_dir, verify_checksums=verify_checksums)
    parts: dict[str, list[np.ndarray]] = {}
    for path in manifest.paths:
        with open_shard(path) as f:
            for name in ("tokens", "start", "label", "targets"):
                if name in f:
                    parts.setdefault(name, []).append(f[name][:])
            for name in ("subject", "record"):
                parts.setdefault(name, []).append(f[name].asstr()[:].astype(str))
    arrays = {k: np.concatenate(v) for k, v in parts.items()}
    return ShardData(meta=manifest.meta, **arrays)


def open_shard(path: str | os.PathLike) -> h5py.File:
    """Open a shard read-only; a corrupt file raises :class:`ShardError` naming it."""
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise ShardError(f"{path}: truncated or corrupt HDF5 file ({e})") from e


def read_column(path: str | os.PathLike, name: str) -> np.ndarray:
    """One whole dataset of a shard (``subject``/``record`` come back as ``str``)."""
    with open_shard(path) as f, _named(path):
        if name not in f:
            raise ShardError(f"{path}: no {name!r} dataset")
        ds = f[name]
        return ds.asstr()[:].astype(str) if ds.dtype.kind == "O" else ds[:]


@contextlib.contextmanager
def _named(path: str | os.PathLike):
    try:
        yield
    except OSError as e:
        raise ShardError(f"{path}: truncated or corrupt HDF5 file ({e})") from e
