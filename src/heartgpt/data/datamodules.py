"""Lightning DataModules over HDF5 shards: windows for pre-training and fine-tuning.

Design (see ``data/README.md``):

- Splits are by subject (:mod:`heartgpt.data.splits`); ``fold`` picks the k-fold/LOSO fold.
  A split is a set of the row index's runs (:mod:`heartgpt.data.row_index`), never a per-row
  array: setup time and memory grow with shards and subjects, not rows.
- All randomness lives in :class:`WindowSampler`, in the main process: it yields
  ``(row, offset)`` keys, fresh each epoch and computed from ``(seed, epoch)`` on demand
  (:mod:`heartgpt.data.epoch_order`). The datasets only read what a key names, so batches are
  identical for any ``num_workers``.
- Each rank takes its own slice of every epoch (the DataModule handles DDP itself; run the
  Trainer with ``use_distributed_sampler=False``). Train drops the last ``< world_size`` keys so
  every rank has as many batches; val pads by repeating keys (``row`` lets you de-duplicate).
  The test loader (evaluation: ``split`` says which rows; ``python -m heartgpt.eval`` scores
  ``all``) uses an :class:`EvalSampler`: every window once over all ranks, in the batches one
  process would make, so the metrics do not depend on the number of devices.
- Setup checks each shard's size; h5py files are opened lazily in the process that reads them
  (reopened after a fork; schema checked at first open; at most 64 open) and rows are read on
  demand, so memory does not grow with the data set.
- The train loader is :class:`ResumableDataLoader`: Lightning (>= 2.3) saves its
  ``state_dict()`` in checkpoints and restores it with ``load_state_dict()``, after which the
  next iteration skips the batches already consumed without reading them.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from heartgpt.data.epoch_order import BlockShuffle, RowRanges, mix
from heartgpt.data.labels import LabelSchema
from heartgpt.data.row_index import RowIndex
from heartgpt.data.shards import (
    LABEL_KINDS,
    Manifest,
    ShardError,
    open_shard,
    read_column,
    validate_shard_dir,
    validate_shard_file,
)
from heartgpt.data.splits import SubjectSplit, read_split_file, split_codes
from heartgpt.data.tokenizer import get_modality

SPLITS = ("train", "val", "test")
EVAL_SPLITS = ("all", *SPLITS)  # the rows the test (evaluation) loader may serve
_FIXED_STREAM = 2**31 - 1  # hash streams: fixed (val/test) offsets, random offsets
_OFFSET_STREAM = 2**31 - 2


# --------------------------------------------------------------------------------- reading rows


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


# --------------------------------------------------------------------------------- sampling


class WindowSampler(Sampler):
    """Yields this rank's ``(row, offset)`` keys for one epoch, computed chunk by chunk.

    Nothing here grows with the number of rows: the epoch's order is a seeded bijection of the
    key positions (:class:`~heartgpt.data.epoch_order.BlockShuffle` of ``(seed, epoch)``:
    blocks of 4,096 keys in random order, keys shuffled within groups of 16 blocks, so a reader
    touches ~16 shards at a time; sets up to 65,536 keys are one plain shuffle) and each key's
    offset a hash of ``(seed, epoch, position)``, so any part of any epoch (this rank's, one
    resumed mid-epoch) is computed on demand and the same ``(seed, epoch)`` always gives the
    same keys.

    Args:
        rows: the rows of the split (a :class:`RowRanges`, or a sorted array of distinct rows).
        segment_length: tokens per row (S).
        window: tokens read per item (block_size + 1 for pre-training, block_size for fine-tuning).
        seed: base seed of every draw.
        shuffle: random order each epoch (train) or the order of ``rows`` (val/test).
        offsets: 'random' (fresh each epoch), 'fixed' (random per row, the same every epoch) or
            'last' (the last ``window`` tokens of the row).
        rank, world_size: this process's slice (positions ``rank, rank + world_size, ...``);
            train truncates, val/test pad by wrapping around, to equal lengths.
        repeats: keys per row per epoch (pre-training ``windows_per_segment``).
        replacement: with ``shuffle``, draw the epoch's rows with replacement (as many draws as
            keys) instead of a permutation, as the released training code did.
    """

    CHUNK = 8192  # keys computed at a time

    def __init__(
        self,
        rows: RowRanges | np.ndarray,
        segment_length: int,
        window: int,
        *,
        seed: int,
        shuffle: bool,
        offsets: str,
        rank: int = 0,
        world_size: int = 1,
        repeats: int = 1,
        replacement: bool = False,
    ) -> None:
        if offsets not in ("random", "fixed", "last"):
            raise ValueError(f"offsets must be 'random', 'fixed' or 'last', got {offsets!r}")
        if window > segment_length:
            raise ValueError(f"window {window} is longer than the segments ({segment_length})")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of {world_size}")
        self.rows = rows if isinstance(rows, RowRanges) else RowRanges.from_rows(np.asarray(rows))
        self.repeats = int(repeats)
        self.num_global = len(self.rows) * self.repeats  # keys of an epoch over all ranks
        self.segment_length = segment_length
        self.window = window
        self.seed = seed
        self.shuffle = shuffle
        self.offsets = offsets
        self.rank = rank
        self.world_size = world_size
        self.replacement = replacement
        self.epoch = 0
        self.start = 0  # keys to skip at the next __iter__ (set by ResumableDataLoader)
        self._order: tuple[int, BlockShuffle] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Lightning calls this at the start of every training epoch."""
        self.epoch = int(epoch)

    def _num_keys(self) -> int:
        n, w = self.num_global, self.world_size
        if w == 1:
            return n
        return (n // w) * w if self.shuffle else -(-n // w) * w

    def __len__(self) -> int:
        return self._num_keys() // self.world_size

    def positions(self, lo: int, hi: int) -> np.ndarray:
        """Global positions of this rank's keys ``lo..hi-1`` (padding wraps around later)."""
        return self.rank + self.world_size * np.arange(lo, hi, dtype=np.int64)

    def keys_at(self, epoch: int, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows, offsets) of the keys at global ``positions`` of ``epoch``."""
        n = self.num_global
        p = np.asarray(positions, dtype=np.int64) % max(1, n)  # val/test padding wraps around
        if self.shuffle:
            if self._order is None or self._order[0] != epoch:
                self._order = (epoch, BlockShuffle(n, (self.seed, epoch),
                                                   replacement=self.replacement))
            key = self._order[1](p)
        else:
            key = p
        rows = self.rows.rows_at(key % len(self.rows))
        span = np.uint64(self.segment_length - self.window + 1)
        if self.offsets == "last":
            offs = np.full(len(rows), int(span) - 1, dtype=np.int64)
        elif self.offsets == "fixed":
            offs = (mix(self.seed, _FIXED_STREAM, rows) % span).astype(np.int64)
        else:
            offs = (mix(self.seed, epoch, p, _OFFSET_STREAM) % span).astype(np.int64)
        return rows, offs

    def global_keys(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, offsets) of all ranks for ``epoch``, in order, before padding or sharding
        (materialised: for small sets and tests)."""
        return self.keys_at(epoch, np.arange(self.num_global, dtype=np.int64))

    def keys(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, offsets) of this rank for ``epoch`` (materialised: for small sets and tests)."""
        return self.keys_at(epoch, self.positions(0, len(self)))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        start, self.start = self.start, 0
        epoch, length = self.epoch, len(self)
        for lo in range(start, length, self.CHUNK):
            rows, offs = self.keys_at(epoch, self.positions(lo, min(lo + self.CHUNK, length)))
            yield from zip(rows.tolist(), offs.tolist(), strict=True)


class EvalSampler(WindowSampler):
    """The keys of an evaluation: every window of ``rows`` exactly once over all ranks.

    The global order (that of ``rows``; offsets drawn as :class:`WindowSampler` draws them) is
    cut into batches of ``batch_size`` and rank ``r`` takes batches ``r, r + world_size, ...``:
    each window is computed in the batch it would be in on one process, and nothing is padded
    or repeated (a rank may get one batch more than another). With fewer batches than ranks the
    keys are cut into ``world_size`` contiguous runs instead. Needs at least ``world_size``
    keys: an idle rank would hang the metrics' sync.
    """

    def __init__(self, rows: RowRanges | np.ndarray, segment_length: int, window: int, *,
                 seed: int, offsets: str, batch_size: int, rank: int = 0, world_size: int = 1,
                 repeats: int = 1) -> None:
        super().__init__(rows, segment_length, window, seed=seed, shuffle=False, offsets=offsets,
                         rank=rank, world_size=world_size, repeats=repeats)
        if self.num_global < world_size:
            raise ValueError(f"{self.num_global} window(s) cannot be spread over {world_size} "
                             "processes without leaving one idle: evaluate on fewer devices")
        self.batch_size = int(batch_size)

    @property
    def _batched(self) -> bool:
        """Whole batches go round the ranks (else: ``world_size`` contiguous runs)."""
        return -(-self.num_global // self.batch_size) >= self.world_size

    def __len__(self) -> int:
        n, w, bs = self.num_global, self.world_size, self.batch_size
        if not self._batched:
            return len(np.array_split(np.arange(n), w)[self.rank])
        last = -(-n // bs) - 1  # the last batch, the only one that may be short
        mine = len(range(self.rank, last + 1, w))
        short = bs * (last + 1) - n if (last - self.rank) % w == 0 else 0
        return mine * bs - short

    def positions(self, lo: int, hi: int) -> np.ndarray:
        j = np.arange(lo, hi, dtype=np.int64)
        if not self._batched:  # fewer keys than ranks x batch: a few, materialise
            return np.array_split(np.arange(self.num_global, dtype=np.int64),
                                  self.world_size)[self.rank][lo:hi]
        bs = self.batch_size
        return (self.rank + self.world_size * (j // bs)) * bs + j % bs


class ResumableDataLoader(DataLoader):
    """A DataLoader over a :class:`WindowSampler` that Lightning can checkpoint mid-epoch.

    ``state_dict()`` is ``{"epoch", "batches"}`` (batches already yielded this epoch).
    ``load_state_dict()`` makes the next iteration of that epoch skip those batches by
    skipping their keys in the sampler, so no data is read for them. The iterator is lazy:
    the epoch is read from the sampler at the first ``next()``, after Lightning's ``set_epoch``.
    """

    def __init__(self, dataset: Dataset, sampler: WindowSampler, **kwargs: Any) -> None:
        super().__init__(dataset, sampler=sampler, **kwargs)
        self._epoch = 0
        self._yielded = 0
        self._resume: tuple[int, int] | None = None

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        return self._batches()

    def _batches(self) -> Iterator[Any]:
        sampler: WindowSampler = self.sampler  # type: ignore[assignment]
        skip = 0
        if self._resume is not None:
            epoch, batches = self._resume
            self._resume = None
            if epoch == sampler.epoch:
                skip = min(batches, len(self))
        assert self.batch_size is not None
        sampler.start = skip * self.batch_size
        self._epoch, self._yielded = sampler.epoch, skip
        it = super().__iter__()
        try:
            for batch in it:
                self._yielded += 1
                yield batch
        finally:
            # Abandoned mid-epoch (limit_train_batches, a crash): stop its workers now rather
            # than whenever the garbage collector gets to it.
            if not self.persistent_workers and hasattr(it, "_shutdown_workers"):
                it._shutdown_workers()

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._epoch, "batches": self._yielded}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        epoch = int(state_dict["epoch"])
        self._resume = (epoch, int(state_dict["batches"]))
        self.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
        self._epoch, self._yielded = epoch, int(state_dict["batches"])


# --------------------------------------------------------------------------------- shared setup


def _rows_between(ranges: RowRanges, lo: int, hi: int) -> np.ndarray:
    """The rows of ``ranges`` in ``lo .. hi - 1``, sorted."""
    starts = np.maximum(ranges.starts, lo)
    stops = np.minimum(ranges.starts + ranges.lengths, hi)
    keep = stops > starts
    if not keep.any():
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([np.arange(a, b) for a, b in zip(starts[keep], stops[keep], strict=True)])


def _open_manifest(
    shard_dir: str | Path,
    modality: str,
    vocab_size: int | None,
    label_kinds: tuple[str, ...],
    min_length: int,
    need: str,
) -> Manifest:
    # Sizes only here: each reader checks a shard's schema when it first opens it.
    manifest = validate_shard_dir(shard_dir, modality=modality, label_kind=label_kinds,
                                  open_files=False)
    meta = manifest.meta
    if vocab_size is not None and meta.vocab_size != vocab_size:
        raise ShardError(
            f"{shard_dir}: shards have vocab_size {meta.vocab_size}, the model expects {vocab_size}"
        )
    if meta.segment_length < min_length:
        raise ShardError(
            f"{shard_dir}: segments hold {meta.segment_length} tokens but {need} = {min_length}; "
            f"re-run `python -m heartgpt.prepare` with segment.samples >= {min_length}"
        )
    return manifest


def _rank_world(dm: L.LightningDataModule) -> tuple[int, int]:
    trainer = dm.trainer
    if trainer is None:
        return 0, 1
    rank, world = int(trainer.global_rank), int(trainer.world_size)
    connector = getattr(trainer, "_accelerator_connector", None)
    if world > 1 and getattr(connector, "use_distributed_sampler", False):
        raise RuntimeError(
            "heartgpt DataModules shard batches across ranks themselves: create the Trainer "
            "with use_distributed_sampler=False (trainer.use_distributed_sampler: false)"
        )
    return rank, world


def _loader_kwargs(dm: Any) -> dict[str, Any]:
    pin = torch.cuda.is_available() if dm.pin_memory is None else bool(dm.pin_memory)
    kw: dict[str, Any] = {"batch_size": dm.batch_size, "num_workers": dm.num_workers, "pin_memory": pin}
    if dm.num_workers > 0:
        kw["persistent_workers"] = bool(dm.persistent_workers)
        if dm.prefetch_factor is not None:
            kw["prefetch_factor"] = dm.prefetch_factor
    return kw


def _split_codes(index: RowIndex, seed: int, val_fraction: float, test_fraction: float, folds,
                 fold: int, stratify: bool, split_file: str | None = None) -> np.ndarray:
    """TRAIN/VAL/TEST (int8) for each subject of ``index``, in its subject-table order."""
    if split_file:
        stated = read_split_file(split_file, index.names())
        codes = np.zeros(index.num_subjects, dtype=np.int8)
        for code, name in enumerate(SPLITS):
            wanted = np.char.encode(np.asarray(stated.of(name), dtype=str), "utf-8")
            codes[np.searchsorted(index.subject_names, wanted)] = code
        return codes
    classes = index.subject_classes() if stratify else None
    return split_codes(index.num_subjects, seed=seed, val_fraction=val_fraction,
                       test_fraction=test_fraction, folds=folds, fold=fold, classes=classes)


# --------------------------------------------------------------------------------- the base


class ShardDataModule(L.LightningDataModule):
    """What both DataModules do: open a shard set, split it by subject, load windows per split.

    Subclasses say how long a window is (:attr:`window`), which shard sets they accept and what
    a window holds (:meth:`_open`), and where validation windows sit (:meth:`_sampler_options`).

    Args:
        shard_dir: a shard directory written by ``python -m heartgpt.prepare``.
        modality: 'ecg' | 'ppg'; the shards must match.
        block_size: model context.
        global_batch_size: windows per optimiser step over all processes (the recipe's batch).
        micro_batch_size: windows per batch of one process (None: the process's whole share of
            the global batch); :attr:`batch_size` follows from the world size
            (:func:`heartgpt.training.batching.plan_batches`).
        seed: split and window randomness.
        val_fraction, test_fraction, folds, fold: subject split (:func:`split_subjects`).
        vocab_size: if given, the shards must have it.
        num_workers, pin_memory (None: when CUDA is available), persistent_workers,
        prefetch_factor: DataLoader settings.
        verify_checksums: hash every shard against the manifest once in ``prepare_data``.
        split: the rows the test loader serves: 'test' (training's ``test=true``), 'val',
            'train' or 'all' (every row of the shard set, what ``python -m heartgpt.eval``
            scores by default).
        split_file: a CSV ``subject,split`` that states the subject split (fractions and folds
            are then not used).
        with_replacement: training windows drawn with replacement (each epoch as many random
            rows as the split holds, at random offsets), as the released code sampled; default
            a shuffled pass over every row.
    """

    def __init__(
        self,
        shard_dir: str,
        modality: str,
        block_size: int,
        global_batch_size: int,
        seed: int,
        val_fraction: float,
        test_fraction: float,
        folds: int | str | None,
        fold: int,
        vocab_size: int | None,
        num_workers: int,
        pin_memory: bool | None,
        persistent_workers: bool,
        prefetch_factor: int | None,
        verify_checksums: bool,
        split: str = "test",
        micro_batch_size: int | None = None,
        split_file: str | None = None,
        with_replacement: bool = False,
    ) -> None:
        super().__init__()
        if split not in EVAL_SPLITS:
            raise ValueError(f"split must be one of {EVAL_SPLITS}, got {split!r}")
        self.shard_dir = str(shard_dir)
        self.eval_split = split  # (`split` is the subject split, below)
        self.modality = get_modality(modality).name
        self.block_size = block_size
        self.global_batch_size, self.micro_batch_size = global_batch_size, micro_batch_size
        self.split_file = str(split_file) if split_file else None
        self.with_replacement = with_replacement
        self.seed = seed
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.folds, self.fold = folds, fold
        self.vocab_size = vocab_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.prefetch_factor = prefetch_factor
        self.verify_checksums = verify_checksums
        self._manifest: Manifest | None = None
        self._split_of_subject: np.ndarray | None = None  # TRAIN/VAL/TEST per subject
        self._ranges: dict[str, RowRanges] = {}
        self._dataset: Dataset | None = None

    @property
    def batch_size(self) -> int:
        """Windows per batch of this process: the micro batch of the global batch at this
        world size (raises :class:`~heartgpt.errors.ConfigError` when they do not divide)."""
        from heartgpt.training.batching import plan_batches

        return plan_batches(self.global_batch_size, self.micro_batch_size,
                            _rank_world(self)[1]).micro_batch_size

    @property
    def window(self) -> int:
        """Tokens a window reads from a segment."""
        raise NotImplementedError

    def _open(self) -> tuple[Manifest, bool]:
        """The shard set's manifest (checked for this DataModule) and whether to stratify."""
        raise NotImplementedError

    def _make_dataset(self, manifest: Manifest) -> Dataset:
        raise NotImplementedError

    def _sampler_options(self, train: bool) -> dict[str, Any]:
        """:class:`WindowSampler` arguments that differ between the DataModules."""
        raise NotImplementedError

    def prepare_data(self) -> None:
        if self.verify_checksums:
            validate_shard_dir(self.shard_dir, modality=self.modality, verify_checksums=True)

    def setup(self, stage: str | None = None) -> None:
        if self._manifest is not None:
            return
        manifest, stratify = self._open()
        index = manifest.row_index
        try:
            codes = _split_codes(index, self.seed, self.val_fraction, self.test_fraction,
                                 self.folds, self.fold, stratify=stratify,
                                 split_file=self.split_file)
            self._ranges = {s: index.rows_of(codes == c) for c, s in enumerate(SPLITS)}
            self._split_of_subject = codes
        except ValueError:
            if self.eval_split != "all":
                raise
            self._split_of_subject, self._ranges = None, {}  # e.g. one subject: all to score
        self._ranges["all"] = RowRanges(np.zeros(1), np.array([manifest.total_rows]))
        self._dataset = self._make_dataset(manifest)
        self._manifest = manifest

    @property
    def manifest(self) -> Manifest:
        self.setup()
        assert self._manifest is not None
        return self._manifest

    @property
    def split(self) -> SubjectSplit:
        """Subjects of each split, by name (for leak checks and cross-validation)."""
        self.setup()
        if self._split_of_subject is None:
            raise ValueError(f"{self.shard_dir}: its subjects cannot be split with these "
                             "settings (split=all, which scores every row, needs no split)")
        return SubjectSplit.from_codes(self.manifest.row_index.names(), self._split_of_subject)

    def row_ranges(self, split: str) -> RowRanges:
        """The rows of ``split`` (``all``: every row) as ranges."""
        self.setup()
        if split != "all" and self._split_of_subject is None:
            _ = self.split  # raises: the subjects could not be split
        return self._ranges[split]

    def rows(self, split: str) -> np.ndarray:
        """Global row indices of ``split`` (materialised: for small sets and tests)."""
        return self.row_ranges(split).to_array()

    def _loader(self, split: str, evaluate: bool = False) -> DataLoader | list:
        """Windows of ``split``: training (shuffled, random offsets), validation (fixed
        windows, padded across ranks) or, with ``evaluate``, an :class:`EvalSampler`'s."""
        rows = self.row_ranges(split)
        train = split == "train" and not evaluate
        if not train and len(rows) == 0:
            return []  # Lightning skips an empty list of loaders
        rank, world = _rank_world(self)
        length = self.manifest.meta.segment_length
        sampler: WindowSampler
        if evaluate:
            sampler = EvalSampler(rows, length, self.window, seed=self.seed,
                                  batch_size=self.batch_size, rank=rank, world_size=world,
                                  **self._sampler_options(False))
        else:
            sampler = WindowSampler(rows, length, self.window, seed=self.seed, shuffle=train,
                                    rank=rank, world_size=world,
                                    replacement=train and self.with_replacement,
                                    **self._sampler_options(train))
        assert self._dataset is not None
        cls = ResumableDataLoader if train else DataLoader
        return cls(self._dataset, sampler=sampler, **_loader_kwargs(self))

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")  # type: ignore[return-value]

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader | list:
        """The windows of ``split`` (default 'test'), each once over all ranks."""
        return self._loader(self.eval_split, evaluate=True)


# --------------------------------------------------------------------------------- pre-training


class PretrainDataModule(ShardDataModule):
    """Random windows of ``block_size + 1`` tokens; batches are ``(x, y)`` int64 (B, block_size).

    Any shard set serves (labels are ignored); segments must hold ``block_size + 1`` tokens.

    Args: as :class:`ShardDataModule`, plus
        windows_per_segment: windows drawn from each training segment per epoch.
    """

    def __init__(
        self,
        shard_dir: str,
        modality: str,
        block_size: int,
        global_batch_size: int,
        seed: int,
        val_fraction: float,
        test_fraction: float,
        folds: int | str | None = None,
        fold: int = 0,
        vocab_size: int | None = None,
        windows_per_segment: int = 1,
        num_workers: int = 0,
        pin_memory: bool | None = None,
        persistent_workers: bool = False,
        prefetch_factor: int | None = None,
        verify_checksums: bool = True,
        split: str = "test",
        micro_batch_size: int | None = None,
        split_file: str | None = None,
        with_replacement: bool = False,
    ) -> None:
        super().__init__(shard_dir, modality, block_size, global_batch_size, seed, val_fraction,
                         test_fraction, folds, fold, vocab_size, num_workers, pin_memory,
                         persistent_workers, prefetch_factor, verify_checksums, split,
                         micro_batch_size, split_file, with_replacement)
        self.save_hyperparameters(logger=False)
        self.windows_per_segment = windows_per_segment

    @property
    def window(self) -> int:
        return self.block_size + 1

    def _open(self) -> tuple[Manifest, bool]:
        manifest = _open_manifest(self.shard_dir, self.modality, self.vocab_size, LABEL_KINDS,
                                  self.window, "block_size + 1")
        return manifest, False

    def _make_dataset(self, manifest: Manifest) -> Dataset:
        return PretrainWindows(ShardRows(manifest), self.block_size)

    def _sampler_options(self, train: bool) -> dict[str, Any]:
        return {"offsets": "random" if train else "fixed",
                "repeats": self.windows_per_segment if train else 1}


# --------------------------------------------------------------------------------- fine-tuning


class FinetuneDataModule(ShardDataModule):
    """Windows of ``block_size`` tokens with their ``label`` (sequence) or ``targets`` (token).

    Batches are dicts: ``tokens`` int64 (B, T), ``label`` float32 (B,) or ``targets`` float32
    (B, T), ``subject`` list[str], ``row`` int64 (B,) (global row, to pool per subject). When
    segments are longer than ``block_size``, train takes a random window, val/test the last.

    Args: as :class:`ShardDataModule`, plus
        label_kind: 'sequence' (needs shards with ``label``) or 'token' (``targets``).
        stratify: stratify the subject split by each subject's majority label (sequence labels).
    """

    def __init__(
        self,
        shard_dir: str,
        modality: str,
        block_size: int,
        label_kind: str,
        global_batch_size: int,
        seed: int,
        val_fraction: float,
        test_fraction: float,
        folds: int | str | None = None,
        fold: int = 0,
        stratify: bool = True,
        vocab_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool | None = None,
        persistent_workers: bool = False,
        prefetch_factor: int | None = None,
        verify_checksums: bool = True,
        split: str = "test",
        micro_batch_size: int | None = None,
        split_file: str | None = None,
        with_replacement: bool = False,
    ) -> None:
        if label_kind not in ("sequence", "token"):
            raise ValueError(f"label_kind must be 'sequence' or 'token', got {label_kind!r}")
        super().__init__(shard_dir, modality, block_size, global_batch_size, seed, val_fraction,
                         test_fraction, folds, fold, vocab_size, num_workers, pin_memory,
                         persistent_workers, prefetch_factor, verify_checksums, split,
                         micro_batch_size, split_file, with_replacement)
        self.save_hyperparameters(logger=False)
        self.label_kind = label_kind
        self.stratify = stratify

    @property
    def window(self) -> int:
        return self.block_size

    def _open(self) -> tuple[Manifest, bool]:
        manifest = _open_manifest(self.shard_dir, self.modality, self.vocab_size,
                                  (self.label_kind,), self.window, "block_size")
        schema = manifest.meta.label_schema
        assert schema is not None  # a labelled label_kind
        if schema.stride > 1 and manifest.meta.segment_length != self.block_size:
            raise ShardError(
                f"{self.shard_dir}: targets every {schema.stride} tokens need segments of exactly "
                f"block_size={self.block_size} tokens (they hold {manifest.meta.segment_length}); "
                f"re-run prepare with segment.samples={self.block_size}")
        return manifest, self.stratify and schema.kind == "class"

    @property
    def label_schema(self) -> LabelSchema:
        """What the shards' labels are: names, classes or values, class mapping, stride."""
        schema = self.manifest.meta.label_schema
        assert schema is not None
        return schema

    def label_statistics(self, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation (float64, one per label column) of the value labels of
        ``split``'s rows, NaNs left out: what a regression head standardises its targets by.
        Reads the label column shard by shard (per-position targets: the whole rows)."""
        ranges = self.row_ranges(split)
        manifest = self.manifest
        name = "label" if self.label_kind == "sequence" else "targets"
        width = self.label_schema.width if self.label_kind == "sequence" else 1
        total, squares, count = np.zeros(width), np.zeros(width), np.zeros(width)
        first = 0
        for path, info in zip(manifest.paths, manifest.shards, strict=True):
            lo, hi = first, first + info.rows
            first = hi
            take = _rows_between(ranges, lo, hi) - lo
            if not len(take):
                continue
            values = read_column(path, name)[take].astype(np.float64).reshape(len(take), -1)
            if name == "targets":
                values = values.reshape(-1, 1)
            ok = np.isfinite(values)
            values = np.where(ok, values, 0.0)
            total += values.sum(axis=0)
            squares += (values**2).sum(axis=0)
            count += ok.sum(axis=0)
        if not count.all():
            raise ShardError(f"{self.shard_dir}: the {split} split has no {name} values to "
                             "standardise a regression head by")
        mean = total / count
        return mean, np.sqrt(np.maximum(squares / count - mean**2, 0.0))

    def _make_dataset(self, manifest: Manifest) -> Dataset:
        return FinetuneWindows(ShardRows(manifest), self.block_size, self.label_kind,
                               manifest.row_index, manifest.meta.label_schema)

    def _sampler_options(self, train: bool) -> dict[str, Any]:
        return {"offsets": "random" if train else "last"}
