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


def _stratified_order(
    subjects: Sequence[str], classes: Mapping[str, int] | None, rng: np.random.Generator
) -> list[str]:
    """A random order in which every prefix and every contiguous block holds the classes in
    about their overall proportions (plain shuffle when no classes are given)."""
    subjects = list(subjects)
    if not classes:
        return [subjects[i] for i in rng.permutation(len(subjects))]
    by_class: dict[int, list[str]] = {}
    for s in subjects:
        by_class.setdefault(int(classes[s]), []).append(s)
    keyed = []
    for c in sorted(by_class):
        members = by_class[c]
        tie = rng.random()  # which class comes first where keys are equal
        for rank, i in enumerate(rng.permutation(len(members))):
            # Evenly spaced fractional rank within the class: interleaves the classes so that
            # any contiguous block holds each within one of its proportional share.
            keyed.append(((rank + 0.5) / len(members), tie, members[i]))
    return [s for _, _, s in sorted(keyed)]


def _count(fraction: float, n: int) -> int:
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"split fractions must be in [0, 1), got {fraction}")
    return 0 if fraction == 0 else max(1, round(fraction * n))


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
    """Split ``subjects`` (duplicates ignored) into train/val/test; see the module docstring.

    ``test_fraction`` is ignored when ``folds`` is set (the fold is the test set).
    """
    pool = sorted(set(map(str, subjects)))
    n = len(pool)
    if n == 0:
        raise ValueError("no subjects to split")
    k = num_folds(folds, n)
    if folds is not None and not 0 <= fold < k:
        raise ValueError(f"fold must be in 0..{k - 1} for folds={folds!r} ({n} subjects), got {fold}")
    rng = np.random.default_rng([seed, 0])
    if folds is None:
        order = _stratified_order(pool, subject_classes, rng)
        n_test = _count(test_fraction, n)
        test, rest = order[:n_test], order[n_test:]
    elif isinstance(folds, str):
        test = [pool[fold]]
        rest = [s for s in pool if s != pool[fold]]
    else:
        order = _stratified_order(pool, subject_classes, rng)
        # Contiguous blocks of a stratified order are stratified folds.
        blocks = np.array_split(np.arange(n), k)
        test = [order[i] for i in blocks[fold]]
        rest = [s for s in order if s not in set(test)]
    val_rng = np.random.default_rng([seed, _VAL_STREAM, fold])
    rest_order = _stratified_order(sorted(rest), subject_classes, val_rng)
    n_val = _count(val_fraction, len(rest))
    val, train = rest_order[:n_val], rest_order[n_val:]
    if not train:
        raise ValueError(
            f"no training subjects left: {n} subjects, val_fraction={val_fraction}, "
            f"test_fraction={test_fraction}, folds={folds!r}"
        )
    split = SubjectSplit(tuple(sorted(train)), tuple(sorted(val)), tuple(sorted(test)))
    split.assert_disjoint()
    return split


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
