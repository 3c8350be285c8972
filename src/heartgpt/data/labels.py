"""What a shard set's labels are: names, kind (classes or values), class mapping, target stride.

A :class:`LabelSchema` is stored with every shard (the ``labels`` attribute, JSON) and in the
manifest, so a run can check that the data holds what its head predicts
(:meth:`heartgpt.heads.task_head.TaskHead.check_labels`) before it trains a step:

- ``label_kind: sequence``: ``label`` float32, (N,) for one column or (N, L) for several
  (``names`` has L entries, e.g. ``[sbp, dbp]``). Classes are stored as their index into
  ``classes``.
- ``label_kind: token``: ``targets`` (N, S // stride): uint8 class indices (beats: 0/1 at every
  position) or float32 values (NaN: no value), one per ``stride`` tokens, the k-th describing
  tokens ``k*stride .. (k+1)*stride - 1``.

Shards written before the schema existed hold one binary label or per-position beat targets:
:meth:`LabelSchema.legacy` describes them.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

KINDS = ("class", "value")


@dataclass(frozen=True)
class LabelSchema:
    """Labels of one shard set (see the module docstring)."""

    names: tuple[str, ...]  # one per label column (sequence) or the per-position target's name
    kind: str  # 'class' (indices into `classes`) | 'value' (continuous, original units)
    classes: tuple[str, ...] | None = None  # class names in index order (kind 'class')
    stride: int = 1  # per-position targets: one every `stride` tokens

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"label kind must be one of {KINDS}, got {self.kind!r}")
        if not self.names:
            raise ValueError("a label schema needs at least one label name")
        if self.kind == "class":
            if not self.classes or len(self.classes) < 2:
                raise ValueError(f"class labels need at least two classes, got {self.classes}")
            if len(self.names) != 1:
                raise ValueError(f"class labels are one column, got {list(self.names)}")
        elif self.classes:
            raise ValueError("value labels have no classes")
        if self.stride < 1:
            raise ValueError(f"target stride must be >= 1, got {self.stride}")

    @property
    def num_classes(self) -> int:
        return len(self.classes or ())

    @property
    def width(self) -> int:
        """Columns of ``label`` (sequence sets)."""
        return len(self.names)

    @property
    def target_dtype(self) -> np.dtype:
        """dtype of per-position ``targets``: class indices fit a byte, values do not."""
        return np.dtype(np.uint8 if self.kind == "class" else np.float32)

    def describe(self) -> str:
        """One line for error messages: ``rhythm: 3 classes (sinus, af, ectopic)``."""
        what = (f"{self.num_classes} classes ({', '.join(self.classes or ())})"
                if self.kind == "class" else "values")
        stride = f", one every {self.stride} tokens" if self.stride > 1 else ""
        return f"{', '.join(self.names)}: {what}{stride}"

    def to_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "kind": self.kind,
                "classes": None if self.classes is None else list(self.classes),
                "stride": self.stride}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LabelSchema:
        classes = d.get("classes")
        return cls(names=tuple(str(n) for n in d["names"]), kind=str(d["kind"]),
                   classes=None if classes is None else tuple(str(c) for c in classes),
                   stride=int(d.get("stride", 1)))

    @classmethod
    def legacy(cls, label_kind: str) -> LabelSchema | None:
        """Shards written before the schema: a binary label per window (``sequence``) or a
        0/1 beat target at every position (``token``); None for unlabelled sets."""
        if label_kind == "sequence":
            return cls(names=("label",), kind="class", classes=("0", "1"))
        if label_kind == "token":
            return cls(names=("beat",), kind="class", classes=("0", "1"))
        return None


def binary_schema(name: str = "label") -> LabelSchema:
    """One 0/1 label (AF screening's)."""
    return LabelSchema(names=(name,), kind="class", classes=("0", "1"))


# ----------------------------------------------------------------------------- reading labels

MAX_CLASSES = 100  # more distinct "classes" than this in a column: continuous values, surely


class LabelsError(ValueError):
    """A labels file cannot be used; the message names the file, the line and the record."""


def _number(cell: str) -> float | None:
    try:
        value = float(cell)
    except ValueError:
        return None
    return value if np.isfinite(value) else None


def _class_names(path: Path, column: str, cells: list[str]) -> tuple[str, ...]:
    """The distinct non-blank ``cells``, integers numerically sorted, other names as strings."""
    distinct = sorted({c for c in cells if c})
    if len(distinct) > MAX_CLASSES:
        raise LabelsError(f"{path}: column {column!r} has {len(distinct)} distinct values, too "
                          "many for classes: continuous targets need label_type=value")
    if all(_number(c) is not None and float(c).is_integer() for c in distinct):
        distinct = sorted(distinct, key=float)
    return tuple(distinct)


def _class_index(classes: tuple[str, ...], cell: str) -> int | None:
    """Index of ``cell`` in ``classes``; integers match numerically ("1.0" is class "1")."""
    if cell in classes:
        return classes.index(cell)
    value = _number(cell)
    if value is not None and value.is_integer():
        for i, name in enumerate(classes):
            other = _number(name)
            if other is not None and other == value:
                return i
    return None


def read_labels_csv(
    path: str | Path,
    columns: Sequence[str] | None = None,
    label_type: str = "class",
    classes: Sequence[str] | None = None,
) -> tuple[dict[str, tuple[str | None, tuple[float, ...] | None]], LabelSchema | None]:
    """``record -> (subject, label values)`` and the labels' schema, from a CSV with a
    ``record`` column, an optional ``subject`` column and the label ``columns``
    (None: a ``label`` column when there is one).

    ``label_type`` ``class``: one column of class names (or integer codes), mapped to their
    index in ``classes`` (None: the distinct values, integers in numeric order); ``value``:
    numbers in any number of columns. A blank cell is "not given" (the record is skipped and
    reported); a number that is not one, or a class not in ``classes``, is a
    :class:`LabelsError` naming the file, line, record and column.
    """
    path = Path(path)
    if label_type not in KINDS:
        raise LabelsError(f"label_type must be one of {KINDS}, got {label_type!r}")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [c.strip() for c in reader.fieldnames or []]
        lines = [(reader.line_num, {k.strip(): (v or "").strip() for k, v in row.items() if k})
                 for row in reader]
    if "record" not in header:
        raise LabelsError(f"{path}: needs a 'record' column (found {header})")
    if columns is None:
        columns = ["label"] if "label" in header else []
    columns = [str(c) for c in columns]
    missing = [c for c in columns if c not in header]
    if missing:
        raise LabelsError(f"{path}: no column {', '.join(map(repr, missing))} (label_columns); "
                          f"it has {header}")
    if label_type == "class" and len(columns) > 1:
        raise LabelsError(f"{path}: class labels are one column, got label_columns={columns}")
    schema = None
    if columns and label_type == "class":
        names = tuple(str(c) for c in classes) if classes else \
            _class_names(path, columns[0], [row[columns[0]] for _, row in lines])
        schema = LabelSchema(names=tuple(columns), kind="class", classes=names)
    elif columns:
        schema = LabelSchema(names=tuple(columns), kind="value")
    out: dict[str, tuple[str | None, tuple[float, ...] | None]] = {}
    for line, row in lines:
        record = row["record"]
        if not record:
            continue
        cells = [row[c] for c in columns]
        label: tuple[float, ...] | None = None
        if cells and all(cells):
            label = tuple(_parse_cell(path, line, record, c, cell, schema)
                          for c, cell in zip(columns, cells, strict=True))
        out[record] = (row.get("subject") or None, label)
    return out, schema


def _parse_cell(path: Path, line: int, record: str, column: str, cell: str,
                schema: LabelSchema | None) -> float:
    where = f"{path}, line {line}, record {record!r}: {column}={cell!r}"
    assert schema is not None
    if schema.kind == "class":
        index = _class_index(schema.classes or (), cell)
        if index is None:
            raise LabelsError(f"{where} is not one of the classes {list(schema.classes or ())}")
        return float(index)
    value = _number(cell)
    if value is None:
        raise LabelsError(f"{where} is not a number")
    return value


def read_sidecar_values(path: Path, column: int | str | None,
                        classes: Sequence[str] | None = None) -> np.ndarray:
    """One value per line of a CSV (header optional; blank: NaN, no value there), or with
    ``classes`` a class name per line mapped to its index: float32 (n,). A cell that is
    neither is a :class:`LabelsError` naming the file and line."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    if not rows:
        return np.zeros(0, dtype=np.float32)
    first = [c.strip() for c in rows[0]]
    names = None if classes is None else tuple(str(c) for c in classes)

    def parse(cell: str) -> float | None:
        return _number(cell) if names is None else _class_index(names, cell)

    header = not all(not c or parse(c) is not None for c in first)  # a name that is no value
    if isinstance(column, str) and not header:
        raise LabelsError(f"{path}: no header row to find column {column!r} in")
    if column is None:
        j = 0
    elif isinstance(column, str):
        if column not in first:
            raise LabelsError(f"{path}: no column {column!r} (it has {first})")
        j = first.index(column)
    else:
        j = int(column)
    values = np.full(len(rows) - int(header), np.nan, dtype=np.float32)
    for i, row in enumerate(rows[int(header):]):
        cell = row[j].strip() if j < len(row) else ""
        if not cell:
            continue
        value = parse(cell)
        if value is None:
            what = f"one of the classes {list(names)}" if names is not None else "a number"
            raise LabelsError(f"{path}, line {i + 1 + int(header)}: {cell!r} is not {what}")
        values[i] = value
    return values
