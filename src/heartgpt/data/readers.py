"""Read one channel of a recording from CSV, NumPy (.npy/.npz), MATLAB (.mat) or WFDB files.

Every reader returns a :class:`Recording`: the chosen channel as float64 samples plus whatever
the file itself says about it (sampling rate, subject, label, beat sample indices). Layout
conventions, documented in ``data/README.md``:

- CSV: one column per channel, one row per sample; an optional header row names the columns
  (names are matched without surrounding spaces, case-insensitively). Empty cells are NaN.
- .npy: 1-D (one channel) or 2-D (samples, channels).
- .npz / .mat: a ``signal`` array (1-D or (samples, channels)); optional ``fs`` (Hz),
  ``channel_names``, ``subject``, ``label`` and ``beats`` (sample indices, 0-based).
  A .mat file with only ``val`` (PhysioNet style) is read as (channels, samples).
- WFDB: ``<record>.hea`` plus its signal files (``.dat`` or PhysioNet/CinC 2020 ``.mat``);
  channels by index or by name (e.g. lead ``I``). ``# Dx:`` header comments can give the label.
"""

from __future__ import annotations

import csv
import glob
import os
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from heartgpt.data.recording import RecordError, RecordFile, Recording
from heartgpt.data.text_tables import is_float, parse_text

FORMATS = ("csv", "npy", "mat", "wfdb")
_EXTENSIONS = {".csv": "csv", ".npy": "npy", ".npz": "npy", ".mat": "mat", ".hea": "wfdb"}
_GLOB_CHARS = re.compile(r"[*?\[]")


# --------------------------------------------------------------------------------- discovery


def _root_of(pattern: str) -> Path:
    """The folder part of a glob before its first wildcard (record names are relative to it)."""
    fixed = []
    for part in Path(pattern).parts:
        if _GLOB_CHARS.search(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def format_of(path: Path) -> str | None:
    """The reader for ``path`` by extension; a .mat beside a .hea of the same stem is WFDB."""
    fmt = _EXTENSIONS.get(path.suffix.lower())
    if fmt == "mat" and path.with_suffix(".hea").exists():
        return None  # signal file of a WFDB record: the .hea is the record
    return fmt


def find_records(
    input: str | Path | Sequence[str | Path],
    format: str = "auto",
    exclude: Sequence[str | Path] = (),
    exclude_suffixes: Sequence[str] = (),
) -> list[RecordFile]:
    """List the recordings under a folder (recursively) or matching a glob, sorted by name.

    ``input`` may also be a list of folders/globs. Record names are paths relative to the
    folder (or the glob's fixed part), without extension. ``format`` 'auto' picks by extension
    (.csv, .npy/.npz, .mat, .hea); otherwise only files of that format are taken. ``exclude``
    are files to leave out (a labels CSV), ``exclude_suffixes`` file-name endings to leave out
    (beat-annotation sidecars).
    """
    if format != "auto" and format not in FORMATS:
        raise ValueError(f"format must be 'auto' or one of {FORMATS}, got {format!r}")
    if not isinstance(input, (str, Path)):
        found = [r for one in input for r in find_records(one, format, exclude, exclude_suffixes)]
        dup = sorted(n for n, c in Counter(r.name for r in found).items() if c > 1)
        if dup:
            raise ValueError(f"record names found in more than one input: {dup[:5]}")
        return sorted(found, key=lambda r: r.name)
    text = str(input)
    if _GLOB_CHARS.search(text):
        root = _root_of(text)
        paths = [Path(p) for p in glob.glob(text, recursive=True)]
    else:
        root = Path(text)
        if root.is_file():
            paths, root = [root], root.parent
        elif root.is_dir():
            paths = list(root.rglob("*"))
        else:
            raise FileNotFoundError(f"{root}: no such file or folder")
    skip = {Path(p).resolve() for p in exclude}
    out = []
    for p in paths:
        if not p.is_file() or p.resolve() in skip or p.name.endswith(tuple(exclude_suffixes)):
            continue
        fmt = format_of(p)
        if fmt is None or (format != "auto" and fmt != format):
            continue
        rel = p.relative_to(root) if p.is_relative_to(root) else Path(p.name)
        out.append(RecordFile(name=rel.with_suffix("").as_posix(), path=p, format=fmt))
    return sorted(out, key=lambda r: r.name)


# --------------------------------------------------------------------------------- channels


def _pick(names: Sequence[str] | None, channel: int | str, n_channels: int, where: Path) -> int:
    if isinstance(channel, (int, np.integer)) and not isinstance(channel, bool):
        if not -n_channels <= channel < n_channels:
            raise RecordError(where, f"channel {channel} out of range ({n_channels} channels)")
        return int(channel) % n_channels
    text = str(channel).strip()
    if names:
        clean = [str(n).strip() for n in names]
        if text in clean:
            return clean.index(text)
        lower = [n.lower() for n in clean]
        if text.lower() in lower:
            return lower.index(text.lower())
    if text.lstrip("-").isdigit():
        return _pick(names, int(text), n_channels, where)
    raise RecordError(where, f"no channel named {text!r} (channels: {list(names or [])})")


def _column(data: np.ndarray, names: Sequence[str] | None, channel: int | str, where: Path) -> np.ndarray:
    """Channel ``channel`` of a (samples,) or (samples, channels) array."""
    data = np.asarray(data)
    if data.ndim == 1:
        data = data[:, None]
    if data.ndim != 2:
        raise RecordError(where, f"expected a 1-D or 2-D signal array, got shape {data.shape}")
    j = _pick(names, channel, data.shape[1], where)
    col = data[:, j]
    if not np.issubdtype(col.dtype, np.number):
        raise RecordError(where, f"channel {channel!r} is not numeric ({col.dtype})")
    return col.astype(np.float64)


# --------------------------------------------------------------------------------- readers


def read_csv(path: Path, channel: int | str, decimal: str = ".") -> np.ndarray:
    """Channel of a CSV/text file (header row optional, see :func:`parse_text`)."""
    names, data = parse_text(path, decimal)
    if data.size == 0:
        raise RecordError(path, "empty signal: no samples")
    return _column(data, names, channel, path)


def _scalar(value) -> object:
    a = np.asarray(value).squeeze()
    if a.size != 1:
        return None
    v = a.item()
    return v.decode() if isinstance(v, bytes) else v


def _names(value) -> list[str] | None:
    if value is None:
        return None
    a = np.asarray(value).reshape(-1)
    return [str(_scalar(v) if not isinstance(v, str) else v).strip() for v in a]


def _from_mapping(d: dict, path: Path, channel: int | str, default_key: str | None) -> tuple[np.ndarray, dict]:
    """Shared .npz/.mat logic: the ``signal`` array plus optional metadata keys."""
    keys = [k for k in d if not k.startswith("__")]
    if "signal" in d:
        data = np.asarray(d["signal"])
    elif "val" in d and default_key == "val":
        data = np.asarray(d["val"]).T  # PhysioNet .mat layout: (channels, samples)
    elif len(keys) == 1:
        data = np.asarray(d[keys[0]])
    else:
        raise RecordError(path, f"no 'signal' array (keys: {sorted(keys)})")
    if data.ndim == 2 and 1 in data.shape:
        data = data.reshape(-1)
    sig = _column(data, _names(d.get("channel_names")), channel, path)
    meta = {}
    if "fs" in d:
        meta["fs"] = float(_scalar(d["fs"]))
    if "subject" in d:
        meta["subject"] = str(_scalar(d["subject"]))
    if "label" in d:
        meta["label"] = float(_scalar(d["label"]))
    if "beats" in d:
        meta["beats"] = np.asarray(d["beats"]).reshape(-1).astype(np.int64)
    return sig, meta


def read_numpy(path: Path, channel: int | str) -> tuple[np.ndarray, dict]:
    if path.suffix.lower() == ".npy":
        return _column(np.load(path, allow_pickle=False), None, channel, path), {}
    with np.load(path, allow_pickle=False) as z:
        return _from_mapping({k: z[k] for k in z.files}, path, channel, None)


def read_mat(path: Path, channel: int | str) -> tuple[np.ndarray, dict]:
    import scipy.io

    try:
        d = scipy.io.loadmat(path, squeeze_me=False)
    except NotImplementedError as e:  # MATLAB v7.3 files are HDF5
        raise RecordError(path, f"MATLAB v7.3 files are not supported; save with -v7 ({e})") from e
    return _from_mapping(d, path, channel, "val")


_WFDB_WHOLE_READ_SAMPLES = 4_000_000  # records up to this many samples (all channels) are read whole


def _wfdb_samples(path: Path) -> int | None:
    """Channels x samples from a WFDB header's record line; None if it does not say (or is a
    multi-segment record, or cannot be read)."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    fields = next((ln.split() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")), [])
    if len(fields) < 4 or "/" in fields[0] or not (fields[1].isdigit() and fields[3].isdigit()):
        return None
    return int(fields[1]) * int(fields[3])


def read_wfdb(path: Path, channel: int | str) -> tuple[np.ndarray, dict]:
    import wfdb

    rec_path = str(path.with_suffix(""))
    record = None
    samples = _wfdb_samples(path)
    if samples is not None and samples <= _WFDB_WHOLE_READ_SAMPLES:
        # every channel in one rdrecord: wfdb parses the header (most of the time here) once, not
        # twice; a record it cannot read so is read below as before, for the same error
        try:
            record = wfdb.rdrecord(rec_path, physical=True)
        except Exception:
            record = None
    if record is not None:
        j = _pick(record.sig_name, channel, record.n_sig, path)
    else:
        header = wfdb.rdheader(rec_path)
        record = wfdb.rdrecord(rec_path, channels=[_pick(header.sig_name, channel, header.n_sig, path)],
                               physical=True)
        j = 0
    meta: dict = {"fs": float(record.fs), "comments": list(record.comments or [])}
    return record.p_signal[:, j].astype(np.float64), meta


def dx_codes(comments: Sequence[str]) -> list[str]:
    """Diagnosis codes of a WFDB header's ``# Dx: a,b,c`` comment (PhysioNet/CinC 2020)."""
    for line in comments:
        key, _, value = line.partition(":")
        if key.strip().lower() == "dx":
            return [c.strip() for c in value.split(",") if c.strip()]
    return []


# --------------------------------------------------------------------------------- annotations


def read_wfdb_beats(path: Path, extension: str, symbols: Sequence[str] | None) -> np.ndarray:
    """Sample indices of a WFDB annotation file ``<record>.<extension>``."""
    import wfdb

    ann = wfdb.rdann(str(path.with_suffix("")), extension)
    samples = np.asarray(ann.sample, dtype=np.int64)
    if symbols:
        keep = np.isin(np.asarray(ann.symbol), list(symbols))
        samples = samples[keep]
    return samples


def sidecar_path(path: Path, sidecar_suffix: str, record_suffix: str | None) -> Path:
    """The annotation file of a record: its name minus ``record_suffix`` plus ``sidecar_suffix``."""
    ending = record_suffix or path.suffix
    if not path.name.endswith(ending):
        raise RecordError(path, f"name does not end with {ending!r}")
    return path.with_name(path.name[: len(path.name) - len(ending)] + sidecar_suffix)


def read_sidecar_beats(path: Path, column: int | str | None, index_base: int) -> np.ndarray:
    """Beat sample indices from a CSV: one column (header optional), a cell may hold several
    space-separated numbers (as CapnoBase's ``pleth_peak_x``)."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = [r for r in csv.reader(f) if r]
    if not rows:
        return np.zeros(0, dtype=np.int64)
    header = not all(is_float(c) or not c.strip() for c in rows[0])
    names = [c.strip() for c in rows[0]] if header else None
    j = _pick(names, 0 if column is None else column, len(rows[0]), path)
    values: list[float] = []
    for r in rows[int(header):]:
        if j < len(r):
            values.extend(float(v) for v in r[j].split())
    return np.asarray(values, dtype=np.float64).round().astype(np.int64) - int(index_base)


# --------------------------------------------------------------------------------- one signal

SIGNAL_SUFFIXES = (".csv", ".txt", ".tsv", "", ".npy")


def read_signal(path: str | os.PathLike, *, allow_nan: bool = False, decimal: str = ".") -> np.ndarray:
    """Read one signal from a ``.csv``/``.txt``/``.tsv`` (one column or one row, see
    :func:`parse_text`) or ``.npy`` file: the input of the per-file tools.

    Args:
        path: the file.
        allow_nan: keep NaN/inf samples (tools that skip unusable windows); otherwise they
            are an error naming their count and the first index.
        decimal: the decimal mark of a text file, ``"."`` or ``","`` (:func:`parse_text`).

    Returns:
        (n,) float64 samples.

    Raises:
        RecordError: missing file, unsupported type, not numeric, several channels, empty, NaNs.
    """
    path = Path(path)
    if not path.exists():
        raise RecordError(path, "no such file")
    if path.is_dir():
        raise RecordError(path, "is a directory, expected a signal file")
    suffix = path.suffix.lower()
    if suffix not in SIGNAL_SUFFIXES:
        raise RecordError(path, f"unsupported file type {suffix!r} (expected .csv, .txt or .npy)")
    if suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except Exception as e:  # numpy raises ValueError/OSError/EOFError depending on damage
            raise RecordError(path, f"cannot read as a NumPy .npy file ({e})") from None
    else:
        arr = parse_text(path, decimal)[1]
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise RecordError(path, f"not a numeric signal (dtype {arr.dtype})")
    if arr.ndim == 2 and 1 in arr.shape:
        arr = arr.reshape(-1)
    if arr.ndim != 1:
        raise RecordError(path, f"expected one channel (one column or one row), got shape "
                                f"{arr.shape}")
    x = arr.astype(np.float64)
    if x.size == 0:
        raise RecordError(path, "empty signal: no samples")
    bad = ~np.isfinite(x)
    if bad.any() and not allow_nan:
        raise RecordError(path, f"{int(bad.sum())} NaN/inf sample(s), first at index "
                                f"{int(np.argmax(bad))}")
    return x


# --------------------------------------------------------------------------------- entry point


_READERS = {"csv": lambda path, channel, decimal: (read_csv(path, channel, decimal), {}),
            "npy": lambda path, channel, decimal: read_numpy(path, channel),
            "mat": lambda path, channel, decimal: read_mat(path, channel),
            "wfdb": lambda path, channel, decimal: read_wfdb(path, channel)}
_FORMAT_NAMES = {"csv": "a CSV/text file", "npy": "a NumPy .npy/.npz file",
                 "mat": "a MATLAB .mat file", "wfdb": "a WFDB record"}


def read_recording(
    rf: RecordFile,
    channel: int | str,
    sample_rate: float | None = None,
    dx_positive: Sequence[str | int] | None = None,
    csv_decimal: str = ".",
) -> Recording:
    """Read the chosen channel of ``rf``. Raises :class:`RecordError`.

    ``sample_rate`` is used when the file does not carry one (a rate in the file wins); a rate
    that is not a positive number is refused. ``dx_positive``: WFDB diagnosis codes that make
    the label 1 (else 0). ``csv_decimal``: the decimal mark of CSV/text files (``.`` or ``,``).
    """
    if rf.format not in _READERS:
        raise ValueError(f"unknown format {rf.format!r}")
    try:
        sig, meta = _READERS[rf.format](rf.path, channel, csv_decimal)
    except RecordError:
        raise
    except Exception as e:  # numpy, scipy and wfdb raise their own types on damaged files
        raise RecordError(rf.path, f"cannot read as {_FORMAT_NAMES[rf.format]} "
                                   f"({type(e).__name__}: {' '.join(str(e).split())})") from None
    fs = meta.get("fs", sample_rate)
    if fs is None:
        raise RecordError(rf.path, "the file does not carry its sampling rate; set sample_rate=<Hz>")
    if not (np.isfinite(fs) and fs > 0):
        where = "its fs" if "fs" in meta else "sample_rate"
        raise RecordError(rf.path, f"sampling rate {fs!r} Hz ({where}) is not a positive number")
    label = meta.get("label")
    if dx_positive and rf.format == "wfdb":
        positive = {str(c) for c in dx_positive}
        label = float(any(c in positive for c in dx_codes(meta.get("comments", []))))
    return Recording(
        name=rf.name, path=rf.path, signal=sig, sample_rate=float(fs),
        subject=meta.get("subject"), label=label, beats=meta.get("beats"),
    )
