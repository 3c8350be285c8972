"""Numbers from delimited text files (CSV, TSV, whitespace): :func:`parse_text`, with a fast
path through numpy's C parser for plain files and a line-by-line parser for every other case,
and the detection of decimal commas that must never be read as column separators."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np

from heartgpt.data.compressed import read_bytes
from heartgpt.data.recording import RecordError

_DELIMITED = re.compile(r"[,;\t]")
_DELIMITED_NO_COMMA = re.compile(r"[;\t]")
_COMMA_DECIMAL = re.compile(r"^[-+]?\d*,\d+$")  # 3,8387 or -0,5: a number with a decimal comma
_INTEGER = re.compile(r"^[-+]?\d+$")
DECIMALS = (".", ",")


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
        text = read_bytes(path).decode("utf-8-sig")  # .gz/.bz2/.xz: decompressed first
    except UnicodeDecodeError:
        raise RecordError(path, "not a text file (cannot decode as UTF-8)") from None
    if "\r" in text:  # CRLF or CR line ends, as reading in text mode would give
        text = text.replace("\r\n", "\n").replace("\r", "\n")
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
            bad = next(c for c in cells if c and not is_float(c))
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
        if all(not c or is_float(c) for c in cells):  # numbers that are not plain: no header
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


def is_float(text: str) -> bool:
    """Whether ``float(text)`` reads ``text``."""
    try:
        float(text)
    except ValueError:
        return False
    return True
