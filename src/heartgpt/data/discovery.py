"""Which files under an input folder or glob are recordings, and of which format.

:func:`list_inputs` sorts every file it meets into one of three kinds:

- a recording (:class:`RecordFile` with its format, picked by extension; ``a.csv.gz`` is a
  compressed CSV);
- a file that is *not read*: a :class:`RecordFile` with a ``problem`` ("unsupported format
  .xyz", a WFDB signal file without its header, a compressed WFDB record, a link that leads
  nowhere). Callers report it as a row with that reason, as any unreadable recording;
- a file left out on purpose, counted by why in :attr:`InputListing.left_out` and said once:
  hidden files (a name or folder starting with "."), the files of a run's outputs inside the
  input folder (``exclude_dirs``), documentation and PhysioNet index files
  (README, LICENSE, RECORDS, ANNOTATORS, SHA256SUMS), files of other formats when ``format``
  names one, and folder links (not followed).

``exclude`` (a labels CSV) and ``exclude_suffixes`` (annotation sidecars) are inputs of the
run itself, and the files of a WFDB record beside its ``.hea`` (``<record>.dat``, ``.atr``
...) are read with it: they are left out without a count.
"""

from __future__ import annotations

import glob
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from heartgpt.data.compressed import compression_of, inner_suffix, stem_of
from heartgpt.data.recording import RecordFile

FORMATS = ("csv", "npy", "mat", "wfdb", "edf")
_EXTENSIONS = {".csv": "csv", ".txt": "csv", ".tsv": "csv", ".npy": "npy", ".npz": "npy",
               ".mat": "mat", ".hea": "wfdb", ".edf": "edf", ".bdf": "edf"}
UNSUPPORTED = "unsupported"  # the format of a file that is not read (RecordFile.problem says why)
READ_SUFFIXES = ", ".join(sorted({*_EXTENSIONS, ".gz", ".bz2", ".xz"}))
_DOCS = re.compile(r"^(readme|license|licence|copying|changelog|records|annotators|sha256sums"
                   r"|md5sums)(\..*)?$", re.IGNORECASE)
_GLOB_CHARS = re.compile(r"[*?\[]")

HIDDEN = "hidden files"
OUTPUTS = "files of heartgpt's outputs"
DOCS = "documentation/index files (README, LICENSE, RECORDS...)"
FOLDER_LINKS = "links to folders (not followed)"


@dataclass
class InputListing:
    """What :func:`list_inputs` found: the files to read or report, and what it left out."""

    records: list[RecordFile]
    left_out: dict[str, int] = field(default_factory=dict)

    @property
    def readable(self) -> list[RecordFile]:
        """The recordings (files of a supported format)."""
        return [r for r in self.records if r.problem is None]

    @property
    def unread(self) -> list[RecordFile]:
        """The files that are not read, each with its ``problem``."""
        return [r for r in self.records if r.problem is not None]

    def note(self) -> str | None:
        """One line on what was left out on purpose, or None."""
        parts = [f"{n} {why}" for why, n in sorted(self.left_out.items()) if n]
        return f"left out (not recordings): {', '.join(parts)}" if parts else None


def _root_of(pattern: str) -> Path:
    """The folder part of a glob before its first wildcard (record names are relative to it)."""
    fixed = []
    for part in Path(pattern).parts:
        if _GLOB_CHARS.search(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def format_of(path: Path) -> str | None:
    """The reader for ``path`` by extension (``a.csv.gz``: csv), or None: not a recording of
    its own (a .mat beside a .hea of the same stem is the signal file of that WFDB record)."""
    fmt = _EXTENSIONS.get(inner_suffix(path))
    if fmt == "wfdb" and compression_of(path):
        return None
    if fmt == "mat" and not compression_of(path) and path.with_suffix(".hea").exists():
        return None
    return fmt


def _problem(path: Path) -> str:
    """Why a file of no supported format is not read (one line, for the tables)."""
    if inner_suffix(path) == ".hea" and compression_of(path):
        return (f"compressed WFDB header ({compression_of(path)}): decompress the record's "
                "files first (WFDB records are read uncompressed)")
    if path.suffix.lower() == ".dat":
        return f"WFDB signal file without its header {path.with_suffix('.hea').name}"
    suffix = "".join(path.suffixes[-2:]).lower() if compression_of(path) else path.suffix
    what = f"format {suffix}" if suffix else "file without an extension"
    return f"unsupported {what} (read: {READ_SUFFIXES})"


def _companion(path: Path) -> bool:
    """A signal or annotation file of the WFDB record beside it (``<stem>.hea``)."""
    if path.suffix.lower() == ".hea" or format_of(path) not in (None, "mat"):
        return False
    return path.with_suffix(".hea").exists() or path.with_name(stem_of(path) + ".hea").exists()


def _hidden(rel: Path) -> bool:
    return any(part.startswith(".") and part not in (".", "..") for part in rel.parts)


def list_inputs(
    input: str | Path | Sequence[str | Path],
    format: str = "auto",
    exclude: Sequence[str | Path] = (),
    exclude_suffixes: Sequence[str] = (),
    exclude_dirs: Sequence[str | Path] = (),
) -> InputListing:
    """Every file under a folder (recursively), matching a glob, or named; see the module.

    ``input`` may also be a list of folders/globs/files. Record names are paths relative to
    the folder (or the glob's fixed part) without the format's extension; a file that is not
    read keeps its extension in its name. ``format`` 'auto' picks by extension; otherwise
    only files of that format are recordings.

    Raises:
        FileNotFoundError: an input that is neither a file, a folder nor a glob.
        ValueError: an unknown ``format``; a record name found in more than one input.
    """
    if format != "auto" and format not in FORMATS:
        raise ValueError(f"format must be 'auto' or one of {FORMATS}, got {format!r}")
    if not isinstance(input, (str, Path)):
        parts = [list_inputs(one, format, exclude, exclude_suffixes, exclude_dirs)
                 for one in input]
        found = [r for p in parts for r in p.records]
        dup = sorted(n for n, c in Counter(r.name for r in found).items() if c > 1)
        if dup:
            raise ValueError(f"record names found in more than one input: {dup[:5]}")
        left: Counter[str] = Counter()
        for p in parts:
            left.update(p.left_out)
        return InputListing(sorted(found, key=lambda r: r.name), dict(left))
    text = str(input)
    named = False
    if _GLOB_CHARS.search(text):
        root = _root_of(text)
        paths = [Path(p) for p in glob.glob(text, recursive=True)]
    else:
        root = Path(text)
        if root.is_file():
            paths, root, named = [root], root.parent, True
        elif root.is_dir():
            paths = list(root.rglob("*"))
        else:
            raise FileNotFoundError(f"{root}: no such file or folder")
    skip = {Path(p).resolve() for p in exclude}
    # output folders inside the input (never one that holds it: then it is the input)
    outputs = [d for d in (Path(x).resolve() for x in exclude_dirs)
               if not root.resolve().is_relative_to(d)]
    out: list[RecordFile] = []
    left: Counter[str] = Counter()
    for p in paths:
        rel = p.relative_to(root) if p.is_relative_to(root) else Path(p.name)
        if p.is_dir():
            if p.is_symlink() and not _hidden(rel):
                left[FOLDER_LINKS] += 1
            continue
        if _hidden(rel) and not named:
            left[HIDDEN] += 1
            continue
        if not p.is_file():  # a link to nothing, or a loop of links
            if p.is_symlink():
                out.append(RecordFile(rel.as_posix(), p, UNSUPPORTED,
                                      "symbolic link that leads to no file (broken, or a loop)"))
            continue
        resolved = p.resolve()
        if resolved in skip or p.name.endswith(tuple(exclude_suffixes)):
            continue
        if any(resolved.is_relative_to(d) for d in outputs):
            left[OUTPUTS] += 1
            continue
        fmt = format_of(p)
        if fmt is None and _companion(p):
            continue  # read with its record
        if fmt is None and _DOCS.match(p.name) and not named:
            left[DOCS] += 1
            continue
        if fmt is None:
            out.append(RecordFile(rel.as_posix(), p, UNSUPPORTED, _problem(p)))
            continue
        if format != "auto" and fmt != format:
            left[f"files of formats other than format={format}"] += 1
            continue
        out.append(RecordFile((rel.parent / stem_of(p)).as_posix(), p, fmt))
    return InputListing(sorted(out, key=lambda r: r.name), dict(left))


def find_records(
    input: str | Path | Sequence[str | Path],
    format: str = "auto",
    exclude: Sequence[str | Path] = (),
    exclude_suffixes: Sequence[str] = (),
) -> list[RecordFile]:
    """The recordings under a folder (recursively) or matching a glob, sorted by name: the
    readable part of :func:`list_inputs` (files of no supported format are left out here;
    ``prepare`` and ``predict`` use :func:`list_inputs` to report them)."""
    return list_inputs(input, format, exclude, exclude_suffixes).readable
