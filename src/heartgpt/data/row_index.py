"""Who each row of a shard set comes from, in memory that grows with subjects, not rows.

Rows are written record by record, so consecutive rows share their subject (and label). The
index stores one entry per *run* of equal ``(subject, label)``: where it starts, its subject (a
code into the sorted subject table) and its label. At 200 M rows of 50-row subjects that is a
few million runs: tens of MB, memory-mapped from two ``.npy`` files beside the manifest::

    index-runs.npy      structured [R]: start int64 (global row), subject int32, label float32 (NaN: none)
    index-subjects.npy  bytes [S]: the subject names, UTF-8, sorted (code = position)

A split's rows are the runs of its subjects (:meth:`RowIndex.rows_of`, a
:class:`~heartgpt.data.epoch_order.RowRanges`), never an array with one entry per row.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from heartgpt.data.epoch_order import RowRanges

RUNS_NAME = "index-runs.npy"
SUBJECTS_NAME = "index-subjects.npy"
INDEX_FILES = (RUNS_NAME, SUBJECTS_NAME)
RUN_DTYPE = np.dtype([("start", "<i8"), ("subject", "<i4"), ("label", "<f4")])


def _same(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise equality where NaN equals NaN (labels: NaN is 'no label')."""
    return (a == b) | (np.isnan(a) & np.isnan(b))


def _run_starts(subjects: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """True where an entry's (subject, label) differs from the one before (the first: True)."""
    starts = np.ones(len(subjects), dtype=bool)
    starts[1:] = (subjects[1:] != subjects[:-1]) | ~_same(labels[1:], labels[:-1])
    return starts


class RowIndex:
    """Runs of rows with one subject and label; see the module docstring.

    Args:
        runs: structured array of :data:`RUN_DTYPE`, ``start`` strictly increasing from 0.
        subject_names: sorted, distinct UTF-8 names (bytes).
        total_rows: rows of the shard set (the last run ends there).
    """

    def __init__(self, runs: np.ndarray, subject_names: np.ndarray, total_rows: int) -> None:
        self.runs = runs
        self.subject_names = subject_names
        self.total_rows = int(total_rows)
        self.run_start = np.asarray(runs["start"])
        self.run_subject = np.asarray(runs["subject"])
        self.run_label = np.asarray(runs["label"])

    # ------------------------------------------------------------------------ building

    @classmethod
    def from_rows(cls, subjects: np.ndarray, labels: np.ndarray | None = None) -> RowIndex:
        """The index of rows given one subject (and label) per row."""
        builder = RowIndexBuilder()
        builder.add(subjects, labels)
        return builder.finish()

    @classmethod
    def concatenate(cls, parts: Sequence[RowIndex]) -> RowIndex:
        """The index of the shard sets of ``parts`` one after the other (``prepare merge``)."""
        names = np.concatenate([p.subject_names[p.run_subject] for p in parts])
        table, codes = np.unique(names, return_inverse=True)
        offsets = np.cumsum([0] + [p.total_rows for p in parts])
        runs = np.zeros(len(names), dtype=RUN_DTYPE)
        runs["start"] = np.concatenate([p.run_start + o for p, o in zip(parts, offsets, strict=False)])
        runs["subject"] = codes.reshape(-1)
        runs["label"] = np.concatenate([p.run_label for p in parts])
        keep = _run_starts(runs["subject"], runs["label"])  # a subject across parts: one run
        return cls(runs[keep], table, int(offsets[-1]))

    # ------------------------------------------------------------------------ files

    def save(self, directory: str | os.PathLike, suffix: str = "") -> list[Path]:
        """Write the two ``.npy`` files (names + ``suffix``, e.g. '.partial'); return them."""
        directory = Path(directory)
        paths = [directory / (RUNS_NAME + suffix), directory / (SUBJECTS_NAME + suffix)]
        for path, array in zip(paths, (self.runs, self.subject_names), strict=True):
            with open(path, "wb") as f:
                np.save(f, np.ascontiguousarray(array), allow_pickle=False)
                f.flush()
                os.fsync(f.fileno())
        return paths

    @classmethod
    def load(cls, directory: str | os.PathLike, total_rows: int) -> RowIndex:
        """Memory-map the index of ``directory``; raises ``ValueError`` if it does not fit a
        shard set of ``total_rows`` rows."""
        directory = Path(directory)
        runs = np.load(directory / RUNS_NAME, mmap_mode="r", allow_pickle=False)
        names = np.load(directory / SUBJECTS_NAME, mmap_mode="r", allow_pickle=False)
        if runs.dtype != RUN_DTYPE or names.dtype.kind != "S" or runs.ndim != 1 or names.ndim != 1:
            raise ValueError(f"index files of {runs.dtype}/{names.dtype}, expected {RUN_DTYPE}/bytes")
        index = cls(runs, names, total_rows)
        index.check()
        return index

    def check(self) -> None:
        """Raise ``ValueError`` unless the runs tile ``0..total_rows`` and name known subjects."""
        start = self.run_start
        if len(start) == 0 or start[0] != 0 or start[-1] >= self.total_rows:
            raise ValueError(f"runs do not cover rows 0..{self.total_rows - 1}")
        if len(start) > 1 and not np.all(np.diff(start) > 0):
            raise ValueError("run starts are not increasing")
        if self.run_subject.min() < 0 or self.run_subject.max() >= len(self.subject_names):
            raise ValueError("a run names a subject outside the subject table")

    # ------------------------------------------------------------------------ queries

    @property
    def num_subjects(self) -> int:
        return len(self.subject_names)

    @property
    def run_length(self) -> np.ndarray:
        return np.diff(np.append(self.run_start, self.total_rows))

    def names(self) -> list[str]:
        """Every subject name, sorted (Python strings: for small sets and reports)."""
        return [n.decode("utf-8") for n in self.subject_names]

    def _run_of(self, row: int) -> int:
        return int(np.searchsorted(self.run_start, row, side="right")) - 1

    def subject_of(self, row: int) -> str:
        """The subject of global ``row``."""
        return self.subject_names[self.run_subject[self._run_of(row)]].decode("utf-8")

    def label_of(self, row: int) -> float:
        """The label of global ``row`` (NaN when the set has none)."""
        return float(self.run_label[self._run_of(row)])

    def rows_per_subject(self) -> np.ndarray:
        """Rows of each subject (int64, in subject-table order)."""
        return np.bincount(self.run_subject, weights=self.run_length,
                           minlength=self.num_subjects).astype(np.int64)

    def subject_classes(self) -> np.ndarray:
        """Each subject's majority label (rounded mean over its rows), for stratified splits."""
        lengths = self.run_length
        sums = np.bincount(self.run_subject, weights=lengths * self.run_label.astype(np.float64),
                           minlength=self.num_subjects)
        return np.round(sums / self.rows_per_subject()).astype(np.int64)

    def rows_of(self, subject_mask: np.ndarray) -> RowRanges:
        """The rows of the subjects where ``subject_mask`` (bool per subject) is true."""
        chosen = np.asarray(subject_mask, dtype=bool)[self.run_subject]
        return RowRanges(self.run_start[chosen], self.run_length[chosen])


class RowIndexBuilder:
    """Collects the runs of rows as they are written (:class:`~heartgpt.data.shard_writer.ShardWriter`)."""

    def __init__(self) -> None:
        self._starts: list[np.ndarray] = []
        self._subjects: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._rows = 0
        self._last: tuple[str, float] | None = None

    def add(self, subjects: np.ndarray, labels: np.ndarray | None = None) -> None:
        """Append rows: one subject name (and label, or None for no labels) per row."""
        subjects = np.asarray(subjects, dtype=str).reshape(-1)
        n = len(subjects)
        if n == 0:
            return
        label = (np.full(n, np.nan, dtype=np.float32) if labels is None
                 else np.asarray(labels, dtype=np.float32).reshape(n))
        new = _run_starts(subjects, label)
        if self._last is not None:
            new[0] = (subjects[0] != self._last[0]) or not _same(label[:1], np.float32([self._last[1]]))[0]
        at = np.flatnonzero(new)
        self._starts.append(at.astype(np.int64) + self._rows)
        self._subjects.append(subjects[at])
        self._labels.append(label[at])
        self._rows += n
        self._last = (str(subjects[-1]), float(label[-1]))

    def finish(self) -> RowIndex:
        """The index of every row added."""
        if not self._rows:
            raise ValueError("no rows")
        names = np.char.encode(np.concatenate(self._subjects), "utf-8")
        table, codes = np.unique(names, return_inverse=True)
        runs = np.zeros(len(names), dtype=RUN_DTYPE)
        runs["start"] = np.concatenate(self._starts)
        runs["subject"] = codes.reshape(-1)
        runs["label"] = np.concatenate(self._labels)
        return RowIndex(runs, table, self._rows)
