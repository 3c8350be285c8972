"""Compressed recordings: ``<name>.<inner>.gz`` / ``.bz2`` / ``.xz`` around a CSV/text, NumPy,
MATLAB or EDF/BDF file are read as the inner format, decompressed in memory (standard library
``gzip``/``bz2``/``lzma``)."""

from __future__ import annotations

import bz2
import gzip
import lzma
from pathlib import Path

from heartgpt.data.recording import RecordError

COMPRESSIONS = {".gz": gzip.decompress, ".bz2": bz2.decompress, ".xz": lzma.decompress}


def compression_of(path: Path) -> str | None:
    """``.gz``, ``.bz2`` or ``.xz`` when ``path`` is a compressed file (by its name), else None."""
    suffix = path.suffix.lower()
    return suffix if suffix in COMPRESSIONS else None


def inner_suffix(path: Path) -> str:
    """The extension of the file inside: ``a.csv.gz`` -> ``.csv``; ``a.csv`` -> ``.csv``."""
    if compression_of(path):
        return Path(path.name[: -len(path.suffix)]).suffix.lower()
    return path.suffix.lower()


def stem_of(path: Path) -> str:
    """The name without the format's extension(s): ``a.csv.gz`` and ``a.csv`` -> ``a``."""
    name = path.name[: -len(path.suffix)] if compression_of(path) else path.name
    return Path(name).stem if Path(name).suffix else name


def read_bytes(path: Path) -> bytes:
    """The contents of ``path``, decompressed when its name ends in .gz/.bz2/.xz.

    Raises:
        RecordError: a compressed file that does not decompress (truncated, not compressed).
    """
    data = path.read_bytes()
    kind = compression_of(path)
    if kind is None:
        return data
    try:
        return COMPRESSIONS[kind](data)
    except (OSError, EOFError, ValueError, lzma.LZMAError) as e:
        raise RecordError(path, f"cannot decompress as {kind} ({type(e).__name__}: "
                                f"{' '.join(str(e).split())})") from None
