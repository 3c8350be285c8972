"""prepare's journal: what a killed run had finished, so the next run starts from there.

``<out_dir>/.prepare-work/journal.jsonl`` is appended to as prepare works:

- a header line ``{"fingerprint": ...}``: a hash of everything that decides the output (the
  input files' names, sizes and mtimes, the settings, the shard size); a run with another
  fingerprint starts afresh;
- ``{"record": i, "outcome": {...}}`` when record ``i`` has been read: what the summary needs;
- ``{"shard": {...}, "end": [r, q]}`` when a shard is staged (fsynced and renamed in
  ``.prepare-work/``): it holds the rows up to the ``q``-th of record ``r`` (exclusive).

On restart the staged shards named by shard lines are kept (each checked against its size and
sha256), records before ``r`` are not read again (their outcomes come from the journal), record
``r`` is read again and its first ``q`` rows dropped. Records are processed and written in a
fixed order, so the result is byte for byte that of a run never interrupted.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from heartgpt.data.shards import ShardError, ShardInfo, validate_shard_file
from heartgpt.files import write_text_atomic

JOURNAL_NAME = "journal.jsonl"


def fingerprint(settings: dict[str, Any], files: list[Path]) -> str:
    """sha256 of the settings and of each input file's path, size and modification time."""
    listing = []
    for path in files:
        st = path.stat()
        listing.append([str(path), st.st_size, st.st_mtime_ns])
    text = json.dumps({"settings": settings, "files": listing}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class ResumePoint:
    """Where a run starts: nothing done, or what an interrupted run had staged."""

    staged: list[tuple[Path, ShardInfo]] = field(default_factory=list)
    ends: list[list[int]] = field(default_factory=list)  # (record, row) where each shard ends
    record: int = 0  # first record to read
    skip_rows: int = 0  # rows of that record already in ``staged``
    outcomes: list[dict[str, Any]] = field(default_factory=list)  # of records 0..record-1

    @property
    def rows(self) -> int:
        return sum(info.rows for _, info in self.staged)


class PrepareJournal:
    """The journal of one prepare into one output directory (see the module docstring)."""

    def __init__(self, work_dir: str | os.PathLike, fingerprint: str) -> None:
        self.work_dir = Path(work_dir)
        self.path = self.work_dir / JOURNAL_NAME
        self.fingerprint = fingerprint
        self._file: Any = None

    def resume(self, enabled: bool = True) -> ResumePoint:
        """Read what an earlier run of the same fingerprint finished and rewrite the journal
        to just that; anything else in the work folder is removed (``enabled=False``: all)."""
        point = self._read() if enabled else None
        if point is None:
            shutil.rmtree(self.work_dir, ignore_errors=True)
            point = ResumePoint()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        keep = {path.name for path, _ in point.staged} | {JOURNAL_NAME}
        for stray in self.work_dir.iterdir():  # shards staged after the last journal line
            if stray.name not in keep:
                stray.unlink()
        lines = [{"fingerprint": self.fingerprint}]
        lines += [{"record": i, "outcome": o} for i, o in enumerate(point.outcomes)]
        lines += [{"shard": asdict(info), "end": end}
                  for (_, info), end in zip(point.staged, point.ends, strict=True)]
        write_text_atomic(self.path, "".join(json.dumps(x, sort_keys=True) + "\n" for x in lines))
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        return point

    def _read(self) -> ResumePoint | None:
        """The resume point the journal records, or None to start afresh."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None
        lines = []
        for line in text.splitlines(keepends=True):
            if not line.endswith("\n"):
                break  # torn by the kill
            try:
                lines.append(json.loads(line))
            except ValueError:
                break
        if not lines or lines[0].get("fingerprint") != self.fingerprint:
            return None
        outcomes: dict[int, dict[str, Any]] = {}
        point = ResumePoint()
        for entry in lines[1:]:
            if "record" in entry:
                outcomes[int(entry["record"])] = entry["outcome"]
            elif "shard" in entry:
                info = ShardInfo(**entry["shard"])
                path = self.work_dir / info.file
                try:
                    validate_shard_file(path, info, verify_checksum=True)
                except ShardError:
                    break  # staged file lost or damaged: resume before it
                point.staged.append((path, info))
                point.ends.append([int(v) for v in entry["end"]])
        if point.ends:
            point.record, point.skip_rows = point.ends[-1]
        if any(i not in outcomes for i in range(point.record)):
            return None  # not a journal this code wrote
        point.outcomes = [outcomes[i] for i in range(point.record)]
        return point

    def record(self, index: int, outcome: dict[str, Any]) -> None:
        """Record ``index`` has been read (written before any of its rows can be staged)."""
        self._append({"record": index, "outcome": outcome}, sync=False)

    def shard(self, info: ShardInfo, end: tuple[int, int]) -> None:
        """A shard is staged and holds the rows up to ``end`` = (record, row) (exclusive)."""
        self._append({"shard": asdict(info), "end": list(end)}, sync=True)

    def _append(self, entry: dict[str, Any], sync: bool) -> None:
        self._file.write(json.dumps(entry, sort_keys=True) + "\n")
        self._file.flush()
        if sync:
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
