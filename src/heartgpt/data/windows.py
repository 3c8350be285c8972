"""Reading windows from a shard set: :class:`ShardRows` (row access, h5py files opened lazily
in the process that reads them) and the map-style datasets that turn a ``(row, offset)`` key
into a pre-training pair (:class:`PretrainWindows`) or a labelled window
(:class:`FinetuneWindows`). Which keys an epoch holds is :mod:`heartgpt.data.samplers`' job."""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from heartgpt.data.labels import LabelSchema
from heartgpt.data.row_index import RowIndex
from heartgpt.data.shards import Manifest, ShardError, open_shard, validate_shard_file


class ShardRows:
    """Row access to the shards of a manifest; h5py files open lazily in the process that
    reads them, at most :attr:`MAX_OPEN` at a time (least recently used closed first: each open
    file holds about half a MB, so 50 k open shards would not fit a worker)."""

    MAX_OPEN = 64

    def __init__(self, manifest: Manifest) -> None:
        self.paths = [str(p) for p in manifest.paths]
        self.infos, self.meta = manifest.shards, manifest.meta
        self.offsets = np.concatenate([[0], np.cumsum([s.rows for s in manifest.shards])])
        self.vocab_size = int(manifest.meta.vocab_size)
        self._files: OrderedDict[int, tuple[Any, dict[str, Any]]] | None = None
        self._pid: int | None = None
        self._checked: set[int] = set()  # shards whose schema this process has checked

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_files"], state["_pid"] = None, None  # handles never cross processes
        state["_checked"] = set()
        return state

    @property
    def is_open(self) -> bool:
        return bool(self._files) and self._pid == os.getpid()

    def _dataset(self, i: int, name: str):
        """Dataset ``name`` of shard ``i`` (the h5py objects are kept: looking a dataset up
        costs 20x reading a window from it)."""
        if self._pid != os.getpid():  # first use here, or a forked worker: open our own
            self._files, self._pid, self._checked = OrderedDict(), os.getpid(), set()
        assert self._files is not None
        entry = self._files.get(i)
        if entry is None:
            if i not in self._checked:  # schema, rows and attributes, once per process
                validate_shard_file(self.paths[i], self.infos[i], self.meta)
                self._checked.add(i)
            if len(self._files) >= self.MAX_OPEN:
                _, (oldest, _) = self._files.popitem(last=False)
                oldest.close()
            entry = self._files[i] = (open_shard(self.paths[i]), {})
        else:
            self._files.move_to_end(i)
        f, datasets = entry
        ds = datasets.get(name)
        if ds is None:
            ds = datasets[name] = f[name]
        return ds

    def read(self, name: str, row: int, start: int, stop: int | None) -> np.ndarray:
        """``dataset[name][row, start:stop]`` of the global ``row``."""
        i = int(np.searchsorted(self.offsets, row, side="right")) - 1
        try:
            return self._dataset(i, name)[row - int(self.offsets[i]), start:stop]
        except OSError as e:
            raise ShardError(f"{self.paths[i]}: truncated or corrupt HDF5 file ({e})") from e

    def tokens(self, row: int, start: int, stop: int) -> torch.Tensor:
        """``tokens[row, start:stop]`` as int64, checked against the vocabulary on every read:
        a damaged row (checksums off, bytes flipped) is a :class:`ShardError` naming the shard
        and row here, not an index error deep in the model later."""
        t = self.read("tokens", row, start, stop).astype(np.int64)
        if t.size and (t.min() < 0 or t.max() >= self.vocab_size):
            i = int(np.searchsorted(self.offsets, row, side="right")) - 1
            bad = t[(t < 0) | (t >= self.vocab_size)]
            raise ShardError(f"{self.paths[i]}: row {row - int(self.offsets[i])} holds token "
                             f"{int(bad[0])}, outside the vocabulary 0..{self.vocab_size - 1}: "
                             "the shard is damaged; re-run prepare (or verify its checksums)")
        return torch.from_numpy(t)

    def close(self) -> None:
        if self._files and self._pid == os.getpid():
            for f, _ in self._files.values():
                f.close()
        self._files, self._pid = None, None


class PretrainWindows(Dataset):
    """``(row, offset) -> (x, y)``: ``window`` tokens split into input and next-token target."""

    def __init__(self, rows: ShardRows, block_size: int) -> None:
        self.rows = rows
        self.block_size = block_size

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        row, off = key
        t = self.rows.tokens(row, off, off + self.block_size + 1)
        return t[:-1], t[1:]  # (T,), (T,)


class FinetuneWindows(Dataset):
    """``(row, offset) -> {"tokens", "label" | "targets", "subject", "row"}``.

    ``label`` is float32 () for one column (read from the row index) or (L,) for several;
    ``targets`` float32 (block_size // stride,) (class indices or values, NaN: none)."""

    def __init__(self, rows: ShardRows, block_size: int, label_kind: str, index: RowIndex,
                 schema: LabelSchema) -> None:
        self.rows = rows
        self.block_size = block_size
        self.label_kind = label_kind
        self.index = index  # each row's subject and (first) label
        self.schema = schema

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        row, off = key
        stop = off + self.block_size
        item: dict[str, Any] = {
            "tokens": self.rows.tokens(row, off, stop),
            "subject": self.index.subject_of(row),
            "row": row,
        }
        if self.label_kind == "sequence" and self.schema.width == 1:
            item["label"] = torch.tensor(self.index.label_of(row), dtype=torch.float32)
        elif self.label_kind == "sequence":
            item["label"] = torch.from_numpy(self.rows.read("label", row, 0, None).astype(np.float32))
        else:
            step = self.schema.stride
            targets = self.rows.read("targets", row, off // step, stop // step)
            item["targets"] = torch.from_numpy(targets.astype(np.float32))
        return item
