"""Read one channel of a recording from CSV, NumPy (.npy/.npz), MATLAB (.mat, v4 to v7.3),
EDF/BDF or WFDB files, also compressed (``.gz``/``.bz2``/``.xz`` around any but WFDB).

Every reader returns a :class:`Recording`: the chosen channel as float64 samples plus whatever
the file itself says about it (sampling rate, subject, label, beat sample indices). Layout
conventions, documented in ``data/README.md``:

- CSV/text: one column per channel, one row per sample; an optional header row names the
  columns (names are matched without surrounding spaces, case-insensitively). Empty cells are
  NaN. A single row of values (no header) is one channel running along the row; a few rows of
  many values (channels along rows) are refused with how to write them.
- .npy: 1-D (one channel) or 2-D (samples, channels).
- .npz / .mat: a ``signal`` array (1-D or (samples, channels)); optional ``fs`` (Hz; also
  ``sample_rate``, ``sampling_rate``, ``srate``, ``sfreq``), ``channel_names``, ``subject``,
  ``label`` and ``beats`` (sample indices, 0-based). A .mat file with only ``val``
  (PhysioNet style) is read as (channels, samples). v7.3 files: :mod:`heartgpt.data.mat_files`.
- EDF/EDF+/BDF/BDF+: one signal by label or index, at its own rate
  (:mod:`heartgpt.data.edf_files`).
- WFDB: ``<record>.hea`` plus its signal files (``.dat`` or PhysioNet/CinC 2020 ``.mat``);
  channels by index or by name (e.g. lead ``I``). ``# Dx:`` header comments can give the label.

Which files are recordings: :mod:`heartgpt.data.discovery` (``find_records``, ``list_inputs``).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from heartgpt.data.channels import column as _column
from heartgpt.data.channels import pick_channel as _pick
from heartgpt.data.compressed import compression_of, inner_suffix, read_bytes
from heartgpt.data.discovery import (  # noqa: F401  (re-exported: the readers' public names)
    FORMATS,
    UNSUPPORTED,
    find_records,
    format_of,
    list_inputs,
)
from heartgpt.data.edf_files import read_edf
from heartgpt.data.mat_files import load_mat
from heartgpt.data.recording import RecordError, RecordFile, Recording
from heartgpt.data.text_tables import is_float, parse_text

# --------------------------------------------------------------------------------- readers


_ROW_MAJOR_ROWS, _ROW_MAJOR_VALUES = 16, 100  # at most this many rows of at least so many values


def read_csv(path: Path, channel: int | str, decimal: str = ".") -> np.ndarray:
    """Channel of a CSV/text file (header row optional, see :func:`parse_text`).

    One row of values without a header is one channel along the row (as :func:`read_signal`
    reads it); a few rows of many values (channels along rows) are refused, saying so.
    """
    names, data = parse_text(path, decimal)
    if data.size == 0:
        raise RecordError(path, "empty signal: no samples")
    rows, values = data.shape
    if rows == 1 and values > 1 and names is None and _pick(None, channel, 1, path) == 0:
        return data[0].astype(np.float64)
    if rows <= _ROW_MAJOR_ROWS and values >= _ROW_MAJOR_VALUES and values > rows:
        raise RecordError(path, f"{rows} row(s) of {values} values: the samples run along the "
                                "rows (one row per channel), but a recording file has one row "
                                "per sample and one column per channel; transpose it, e.g. "
                                "numpy.savetxt(path, x.T, delimiter=',') (one row alone is read "
                                "as one channel)")
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


_RATE_KEYS = ("fs", "sample_rate", "sampling_rate", "samplerate", "srate", "sfreq", "fs_hz")


def _from_mapping(d: dict, path: Path, channel: int | str, default_key: str | None) -> tuple[np.ndarray, dict]:
    """Shared .npz/.mat logic: the ``signal`` array plus optional metadata keys."""
    keys = [k for k in d if not k.startswith("__") and k.lower() not in _RATE_KEYS]
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
    rate_key = next((k for k in d if k.lower() in _RATE_KEYS), None)
    if rate_key is not None:
        meta["fs"] = float(_scalar(d[rate_key]))
    if "subject" in d:
        meta["subject"] = str(_scalar(d["subject"]))
    if "label" in d:
        meta["label"] = float(_scalar(d["label"]))
    if "beats" in d:
        meta["beats"] = np.asarray(d["beats"]).reshape(-1).astype(np.int64)
    return sig, meta


def _npy_source(path: Path) -> Path | io.BytesIO:
    return io.BytesIO(read_bytes(path)) if compression_of(path) else path


def read_numpy(path: Path, channel: int | str) -> tuple[np.ndarray, dict]:
    """Channel of a .npy/.npz file (``.npy.gz`` too); an .npz's metadata keys."""
    if inner_suffix(path) == ".npy":
        return _column(np.load(_npy_source(path), allow_pickle=False), None, channel, path), {}
    with np.load(_npy_source(path), allow_pickle=False) as z:
        return _from_mapping({k: z[k] for k in z.files}, path, channel, None)


def read_mat(path: Path, channel: int | str) -> tuple[np.ndarray, dict]:
    """Channel of a MATLAB .mat file, v4 to v7.3 (:func:`heartgpt.data.mat_files.load_mat`)."""
    return _from_mapping(load_mat(path), path, channel, "val")


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


def _missing_signal_files(path: Path) -> list[str]:
    """The signal files a single-segment WFDB header names that are not beside it."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    lines = [ln.split() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines or "/" in lines[0][0]:
        return []  # multi-segment: its segments are headers of their own
    names = {fields[0] for fields in lines[1:] if fields and fields[0] != "~"}
    return sorted(n for n in names if not (path.parent / n).exists())


def read_wfdb(path: Path, channel: int | str) -> tuple[np.ndarray, dict]:
    """Channel of a WFDB record (its ``.hea``), physical units, its own rate and comments."""
    import wfdb

    missing = _missing_signal_files(path)
    if missing:
        raise RecordError(path, f"WFDB header without its signal file(s) {', '.join(missing)}: "
                                "copy them beside it")
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

SIGNAL_SUFFIXES = (".csv", ".txt", ".tsv", "", ".npy", ".edf", ".bdf")  # and compressed


def read_signal(path: str | os.PathLike, *, allow_nan: bool = False, decimal: str = ".",
                channel: int | str | None = None) -> np.ndarray:
    """Read one signal from a ``.csv``/``.txt``/``.tsv`` (one column or one row, see
    :func:`parse_text`), ``.npy`` or EDF/BDF file, also ``.gz``/``.bz2``/``.xz``: the input of
    the per-file tools (:func:`read_signal_and_rate` also gives the rate an EDF file carries).

    Args:
        path: the file.
        allow_nan: keep NaN/inf samples (tools that skip unusable windows); otherwise they
            are an error naming their count and the first index.
        decimal: the decimal mark of a text file, ``"."`` or ``","`` (:func:`parse_text`).
        channel: the column/signal (index or name) of a file of several; None: the file
            must hold one.

    Returns:
        (n,) float64 samples.

    Raises:
        RecordError: missing file, unsupported type, not numeric, several channels, empty, NaNs.
    """
    return read_signal_and_rate(path, allow_nan=allow_nan, decimal=decimal, channel=channel)[0]


def read_signal_and_rate(path: str | os.PathLike, *, allow_nan: bool = False, decimal: str = ".",
                         channel: int | str | None = None) -> tuple[np.ndarray, float | None]:
    """:func:`read_signal`, and the sampling rate (Hz) the file states (EDF/BDF) or None."""
    path = Path(path)
    if not path.exists():
        raise RecordError(path, "no such file")
    if path.is_dir():
        raise RecordError(path, "is a directory, expected a signal file")
    suffix = inner_suffix(path)
    if suffix not in SIGNAL_SUFFIXES:
        raise RecordError(path, f"unsupported file type {suffix!r} (expected .csv, .txt, .npy, "
                                ".edf or .bdf, also .gz)")
    rate = None
    if suffix in (".edf", ".bdf"):
        arr, meta = read_edf(path, channel)
        rate = meta["fs"]
    elif channel is not None:
        rf = RecordFile(path.stem, path, "npy" if suffix == ".npy" else "csv")
        arr = _READERS[rf.format](path, channel, decimal)[0]
    elif suffix == ".npy":
        try:
            arr = np.load(_npy_source(path), allow_pickle=False)
        except RecordError:
            raise
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
                                f"{arr.shape}; choose one (channel=..., the tools: --channel)")
    x = arr.astype(np.float64)
    if x.size == 0:
        raise RecordError(path, "empty signal: no samples")
    bad = ~np.isfinite(x)
    if bad.any() and not allow_nan:
        raise RecordError(path, f"{int(bad.sum())} NaN/inf sample(s), first at index "
                                f"{int(np.argmax(bad))}")
    return x, rate


# --------------------------------------------------------------------------------- entry point


_READERS = {"csv": lambda path, channel, decimal: (read_csv(path, channel, decimal), {}),
            "npy": lambda path, channel, decimal: read_numpy(path, channel),
            "mat": lambda path, channel, decimal: read_mat(path, channel),
            "wfdb": lambda path, channel, decimal: read_wfdb(path, channel),
            "edf": lambda path, channel, decimal: read_edf(path, channel)}
_FORMAT_NAMES = {"csv": "a CSV/text file", "npy": "a NumPy .npy/.npz file",
                 "mat": "a MATLAB .mat file", "wfdb": "a WFDB record", "edf": "an EDF/BDF file"}


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
    if rf.problem is not None:  # a file list_inputs found but cannot read: say why
        raise RecordError(rf.path, rf.problem)
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
