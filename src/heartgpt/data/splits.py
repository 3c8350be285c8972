"""Train/val/test splits by subject: fractions, k-fold and leave-one-subject-out.

A subject's rows are never in two splits. Everything is deterministic from ``seed``:

- ``folds=None``: ``test_fraction`` of the subjects are the test set, ``val_fraction`` the
  validation set, the rest train.
- ``folds=K`` (int >= 2): the subjects are dealt into K folds; fold ``fold`` is the test set and
  ``val_fraction`` of the remaining subjects the validation set.
- ``folds="loso"``: the ``fold``-th subject in sorted order is the test set (exactly one
  subject); ``val_fraction`` of the others are the validation set.
- a split file (:func:`read_split_file`, ``data.split_file``): a CSV ``subject,split`` states
  it, e.g. a data set's own training and testing sets.

With ``subject_classes`` (e.g. each subject's AF/non-AF label) every draw is stratified: the
test fold and the validation set get the classes in about their overall proportions.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from heartgpt.errors import InputError

_VAL_STREAM = 7  # separate random stream for the validation draw (any fixed number)


@dataclass(frozen=True)
class SubjectSplit:
    """Subjects of each split, each tuple sorted."""

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]

    def of(self, name: str) -> tuple[str, ...]:
        """Subjects of split ``name`` ('train' | 'val' | 'test')."""
        if name not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test', got {name!r}")
        return getattr(self, name)

    @classmethod
    def from_codes(cls, names: Sequence[str], codes: np.ndarray) -> SubjectSplit:
        """The split :func:`split_codes` gives ``names`` (sorted), as tuples of names."""
        parts = [tuple(str(names[i]) for i in np.flatnonzero(codes == c)) for c in (TRAIN, VAL, TEST)]
        split = cls(*parts)
        split.assert_disjoint()
        return split

    def assert_disjoint(self) -> None:
        """Raise if a subject is in two splits."""
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            both = set(self.of(a)) & set(self.of(b))
            if both:
                raise AssertionError(f"subjects in both {a} and {b}: {sorted(both)}")


def num_folds(folds: int | str | None, n_subjects: int) -> int:
    """How many values ``fold`` can take: K for k-fold, the number of subjects for LOSO."""
    if folds is None:
        return 1
    if isinstance(folds, str):
        if folds.lower() != "loso":
            raise ValueError(f"folds must be null, an integer >= 2 or 'loso', got {folds!r}")
        return n_subjects
    if int(folds) < 2:
        raise ValueError(f"folds must be >= 2 (or 'loso'), got {folds}")
    return int(folds)


TRAIN, VAL, TEST = 0, 1, 2  # what :func:`split_codes` says of each subject
SPLIT_NAMES = ("train", "val", "test")


def _stratified_order(n: int, classes: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """A random order of ``0..n-1`` in which every prefix and every contiguous block holds the
    classes in about their overall proportions (a plain shuffle when ``classes`` is None)."""
    if classes is None:
        return rng.permutation(n)
    fraction = np.zeros(n, dtype=np.float64)
    tie = np.zeros(n, dtype=np.float64)
    for c in np.unique(classes):
        members = np.flatnonzero(classes == c)
        tie[members] = rng.random()  # which class comes first where fractions are equal
        # Evenly spaced fractional rank within the class: interleaves the classes so that
        # any contiguous block holds each within one of its proportional share.
        ranks = np.empty(len(members), dtype=np.float64)
        ranks[rng.permutation(len(members))] = np.arange(len(members))
        fraction[members] = (ranks + 0.5) / len(members)
    return np.lexsort((np.arange(n), tie, fraction))


def _count(fraction: float, n: int) -> int:
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"split fractions must be in [0, 1), got {fraction}")
    return 0 if fraction == 0 else max(1, round(fraction * n))


def split_codes(
    n: int,
    *,
    seed: int,
    val_fraction: float,
    test_fraction: float = 0.0,
    folds: int | str | None = None,
    fold: int = 0,
    classes: np.ndarray | None = None,
) -> np.ndarray:
    """The split of each of ``n`` subjects, given in sorted order: int8 ``TRAIN``/``VAL``/
    ``TEST`` per subject (arrays only, so millions of subjects cost megabytes).

    ``classes`` (int per subject) stratifies every draw; see the module docstring.
    ``test_fraction`` is ignored when ``folds`` is set (the fold is the test set).
    """
    if n == 0:
        raise ValueError("no subjects to split")
    k = num_folds(folds, n)
    if folds is not None and not 0 <= fold < k:
        raise ValueError(f"fold must be in 0..{k - 1} for folds={folds!r} ({n} subjects), got {fold}")
    if classes is not None:
        classes = np.asarray(classes, dtype=np.int64)
    rng = np.random.default_rng([seed, 0])
    is_test = np.zeros(n, dtype=bool)
    if folds is None:
        is_test[_stratified_order(n, classes, rng)[: _count(test_fraction, n)]] = True
    elif isinstance(folds, str):
        is_test[fold] = True
    else:
        # Contiguous blocks of a stratified order are stratified folds.
        order = _stratified_order(n, classes, rng)
        is_test[order[np.array_split(np.arange(n), k)[fold]]] = True
    rest = np.flatnonzero(~is_test)  # sorted
    val_rng = np.random.default_rng([seed, _VAL_STREAM, fold])
    rest_order = _stratified_order(len(rest), None if classes is None else classes[rest], val_rng)
    n_val = _count(val_fraction, len(rest))
    if n_val >= len(rest):
        raise ValueError(
            f"no training subjects left: {n} subjects, val_fraction={val_fraction}, "
            f"test_fraction={test_fraction}, folds={folds!r}"
        )
    codes = np.full(n, TRAIN, dtype=np.int8)
    codes[is_test] = TEST
    codes[rest[rest_order[:n_val]]] = VAL
    return codes


def split_subjects(
    subjects: Sequence[str],
    *,
    seed: int,
    val_fraction: float,
    test_fraction: float = 0.0,
    folds: int | str | None = None,
    fold: int = 0,
    subject_classes: Mapping[str, int] | None = None,
) -> SubjectSplit:
    """Split ``subjects`` (duplicates ignored) into train/val/test; see the module docstring
    and :func:`split_codes`, which does the work on the sorted subjects."""
    pool = sorted(set(map(str, subjects)))
    classes = (np.array([int(subject_classes[s]) for s in pool], dtype=np.int64)
               if subject_classes else None)
    codes = split_codes(len(pool), seed=seed, val_fraction=val_fraction,
                        test_fraction=test_fraction, folds=folds, fold=fold, classes=classes)
    return SubjectSplit.from_codes(pool, codes)


def read_split_file(path: str | os.PathLike, subjects: Sequence[str]) -> SubjectSplit:
    """The split a CSV with columns ``subject,split`` states (split: train | val | test), e.g.
    MIMIC PERform's training and testing sets. Every subject of the shard set must be listed
    once; subjects the file lists but the shards lack are an error too (a typo must not shrink
    a split silently).

    Raises:
        InputError: ``<file>: <problem>`` naming the subjects or the line.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such split file (a CSV with columns subject,split)")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        cols = {c.strip().lower(): c for c in reader.fieldnames or []}
        if not {"subject", "split"} <= cols.keys():
            raise InputError(path, f"needs columns subject,split (found {reader.fieldnames})")
        given: dict[str, str] = {}
        for line, row in enumerate(reader, start=2):
            subject, split = row[cols["subject"]].strip(), row[cols["split"]].strip().lower()
            if split not in ("train", "val", "test"):
                raise InputError(path, f"line {line}: split {split!r} is not train, val or test")
            if subject in given:
                raise InputError(path, f"line {line}: subject {subject!r} is listed twice")
            given[subject] = split
    missing = sorted(set(subjects) - given.keys())
    unknown = sorted(given.keys() - set(subjects))
    if missing or unknown:
        raise InputError(path, f"does not match the shard set's subjects (not in the file: "
                               f"{missing[:5]}; not in the shards: {unknown[:5]})")
    parts = {s: tuple(sorted(n for n, v in given.items() if v == s)) for s in ("train", "val", "test")}
    return SubjectSplit(parts["train"], parts["val"], parts["test"])
