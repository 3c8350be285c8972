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
import functools
import glob
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from heartgpt.errors import InputError

FORMATS = ("csv", "npy", "mat", "wfdb")
_EXTENSIONS = {".csv": "csv", ".npy": "npy", ".npz": "npy", ".mat": "mat", ".hea": "wfdb"}
_GLOB_CHARS = re.compile(r"[*?\[]")
_DELIMITED = re.compile(r"[,;\t]")
_DELIMITED_NO_COMMA = re.compile(r"[;\t]")
_COMMA_DECIMAL = re.compile(r"^[-+]?\d*,\d+$")  # 3,8387 or -0,5: a number with a decimal comma
_INTEGER = re.compile(r"^[-+]?\d+$")
DECIMALS = (".", ",")


@dataclass
class Recording:
    """One channel of one recording, at its own sampling rate."""

    name: str  # record id: path relative to the input root, without extension
    path: Path
    signal: np.ndarray  # (n,) float64
    sample_rate: float | None  # Hz; None when the file does not say
    subject: str | None = None
    label: float | tuple[float, ...] | None = None  # one value, or one per label column
    beats: np.ndarray | None = None  # sample indices at sample_rate, 0-based
    targets: np.ndarray | None = None  # per-chunk targets (sidecar values: one per target stride)


@dataclass(frozen=True)
class RecordFile:
    """A recording found on disk, before reading."""

    name: str
    path: Path
    format: str


class RecordError(InputError):
    """A recording cannot be read (``prepare`` skips it as 'unreadable'; the tools stop)."""


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


def parse_text(path: Path, decimal: str = ".") -> tuple[list[str] | None, np.ndarray]:
    """A delimited text file: its header names (``None`` without a header line) and its
    numbers as a 2-D float64 array (rows, columns).

    Cells are split at commas, semicolons or tabs (in files without any: at whitespace); an empty
    cell, and an empty line between samples, is NaN (a missing sample); ``#`` lines are
    comments. A cell that is not a number after the header raises :class:`RecordError`
    naming its line.

    ``decimal=","`` reads numbers written with a decimal comma (``1,2796;2,5592``): cells are
    then split at semicolons, tabs or whitespace only. With the default ``"."`` a file that
    evidently uses decimal commas is refused (:func:`_decimal_comma_evidence`), never read as
    commas between columns.
    """
    if decimal not in DECIMALS:
        raise ValueError(f"decimal must be '.' or ',', got {decimal!r}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise RecordError(path, "not a text file (cannot decode as UTF-8)") from None
    if decimal == ".":
        evidence = _may_have_decimal_commas(text) and _decimal_comma_evidence(text.splitlines())
        if evidence:
            raise RecordError(path, f"numbers written with a decimal comma ({evidence}); "
                                    """read them with 'csv_decimal=","' (the tools: --csv-decimal ,)""")
        plain = _parse_plain_numbers(text)
        if plain is not None:
            return plain
    return _parse_lines(text.splitlines(), path, decimal)


def _parse_lines(lines: list[str], path: Path, decimal: str) -> tuple[list[str] | None, np.ndarray]:
    """:func:`parse_text` line by line in Python: every case, with its errors."""
    delimiters = _DELIMITED if decimal == "." else _DELIMITED_NO_COMMA
    rows: list[list[float]] = []
    names: list[str] | None = None
    blanks = 0  # empty lines since the last row: missing samples if more data follows
    for lineno, line in enumerate(lines, start=1):
        line = line.strip()
        if line.startswith("#"):
            continue
        if not line:
            blanks += 1
            continue
        cells = _split_cells(line, delimiters)
        if decimal == ",":
            cells = [c.replace(",", ".") for c in cells]
        try:
            values = [float(c) if c else float("nan") for c in cells]  # empty cell: NaN
        except ValueError:
            if not rows and names is None:  # a header line before any numbers
                names = cells
                continue
            bad = next(c for c in cells if c and not _is_float(c))
            raise RecordError(path, f"line {lineno}: not a number: {bad[:40]!r}") from None
        if rows and len(values) != len(rows[0]):
            raise RecordError(path, f"line {lineno}: {len(values)} values, expected {len(rows[0])}")
        if rows and blanks:
            rows.extend([[float("nan")] * len(values)] * blanks)
        blanks = 0
        rows.append(values)
    if not rows:
        return names, np.zeros((0, 1))
    return names, np.asarray(rows, dtype=np.float64)


def _split_cells(line: str, delimiters: re.Pattern) -> list[str]:
    """The cells of a stripped line: split at ``delimiters`` if it has any, else at whitespace."""
    if delimiters.search(line):
        return [c.strip() for c in delimiters.split(line)]
    return line.split()


_PLAIN_NUMBER = r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"  # no nan, inf, 1_0
_PLAIN_LINE = re.compile(rf" *{_PLAIN_NUMBER}(?: *[,;\t ] *{_PLAIN_NUMBER})* *")


@functools.lru_cache(maxsize=64)
def _plain_rows(delimiter: str, columns: int) -> re.Pattern:
    """Lines of exactly ``columns`` plain numbers split by ``delimiter`` (" ": spaces), to the end."""
    sep = " +" if delimiter == " " else f" *{re.escape(delimiter)} *"
    row = rf" *{_PLAIN_NUMBER}(?:{sep}{_PLAIN_NUMBER}){{{columns - 1}}} *"
    return re.compile(rf"(?:{row}(?:\r?\n|\Z))+")


def _parse_plain_numbers(text: str) -> tuple[list[str] | None, np.ndarray] | None:
    """:func:`parse_text` (decimal point) of a file of plain numbers in numpy's C parser, or None.

    Applies only to an optional header line followed at once by rows of the same number of
    plain numbers (no nan/inf) split by one delimiter (``,``, ``;`` or tab) or by spaces, with
    LF or CRLF line ends; anything else (empty cells, blank or ``#`` lines, ragged rows,
    a header whose cells all read as numbers) is None, left to :func:`_parse_lines`. Both
    parsers round correctly, so the numbers are the same to the bit.
    """
    first, _, rest = text.partition("\n")
    first = first.removesuffix("\r")
    names = None
    body = text
    if not _PLAIN_LINE.fullmatch(first):  # a header line, or not plain at all
        head = first.strip()
        if len(first.splitlines()) != 1 or head.startswith("#"):
            return None
        cells = _split_cells(head, _DELIMITED)
        if all(not c or _is_float(c) for c in cells):  # numbers that are not plain: no header
            return None
        names, body = cells, rest
    row = body.partition("\n")[0]
    if not row.strip():
        return None
    delimiters = set(_DELIMITED.findall(row)) or {" "}
    if len(delimiters) != 1:
        return None
    delimiter = delimiters.pop()
    columns = len(row.split()) if delimiter == " " else row.count(delimiter) + 1
    if not _plain_rows(delimiter, columns).fullmatch(body):
        return None
    n_rows = body.count("\n") + (not body.endswith("\n"))
    if delimiter in ",;":
        body = body.replace(delimiter, " ")
    data = np.fromstring(body, dtype=np.float64, sep=" ")
    if data.size != n_rows * columns:  # cannot happen after the match; never guess
        return None
    return names, data.reshape(n_rows, columns)


# what the second sign of _decimal_comma_evidence needs; one literal start each (fast to scan)
_LEADING_ZERO_PAIR = tuple(re.compile(p) for p in (r",\s*0\d", r"-0\s*,", r"\+0\s*,"))


def _may_have_decimal_commas(text: str) -> bool:
    """False when :func:`_decimal_comma_evidence` cannot find any (a whole-text test, in C):
    its first sign needs a comma and a semicolon or tab, its second ``,0<digit>`` or ``-0,``."""
    return ("," in text and (";" in text or "\t" in text)) or any(
        p.search(text) for p in _LEADING_ZERO_PAIR)


def _decimal_comma_evidence(lines: list[str]) -> str | None:
    """The first line that shows the file writes numbers with decimal commas, quoted, or None.

    Two signs: a semicolon- or tab-separated cell such as ``2,5592``; or, in a file of two
    comma-separated integer columns, a second "column" with a leading zero (``3,0387``) or a
    first one of ``-0`` (``-0,5``), which integer columns do not have.
    """
    pairs_only, leading_zero = True, None
    data_lines = 0
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if _DELIMITED_NO_COMMA.search(line):
            cells = [c.strip() for c in _DELIMITED_NO_COMMA.split(line)]
            if any(_COMMA_DECIMAL.match(c) for c in cells):
                return repr(line[:40])
            continue
        cells = [c.strip() for c in line.split(",")]
        if not all(_INTEGER.match(c) for c in cells):
            if data_lines:  # a header line is allowed before the numbers
                pairs_only = False
            continue
        data_lines += 1
        if len(cells) != 2:
            pairs_only = False
        elif leading_zero is None and ((len(cells[1]) > 1 and cells[1].startswith("0"))
                                       or cells[0] in ("-0", "+0")):
            leading_zero = line
    if pairs_only and data_lines and leading_zero is not None:
        return repr(leading_zero[:40])
    return None


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


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
    header = not all(_is_float(c) or not c.strip() for c in rows[0])
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
