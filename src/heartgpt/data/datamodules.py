"""Lightning DataModules over HDF5 shards: windows for pre-training and fine-tuning.

Design (see ``data/README.md``):

- Splits are by subject (:mod:`heartgpt.data.splits`); ``fold`` picks the k-fold/LOSO fold.
- All randomness lives in :class:`WindowSampler`, in the main process: it yields
  ``(row, offset)`` keys, fresh each epoch from ``np.random.default_rng([seed, epoch])``. The
  datasets only read what a key names, so batches are identical for any ``num_workers``.
- Each rank takes its own slice of every epoch (the DataModule handles DDP itself; run the
  Trainer with ``use_distributed_sampler=False``). Train drops the last ``< world_size`` keys so
  every rank has as many batches; val pads by repeating keys (``row`` lets you de-duplicate).
  The test loader (evaluation: ``split`` says which rows; ``python -m heartgpt.eval`` scores
  ``all``) uses an :class:`EvalSampler`: every window once over all ranks, in the batches one
  process would make, so the metrics do not depend on the number of devices.
- h5py files are opened lazily in the process that reads them (reopened after a fork) and rows
  are read on demand, so memory does not grow with the data set.
- The train loader is :class:`ResumableDataLoader`: Lightning (>= 2.3) saves its
  ``state_dict()`` in checkpoints and restores it with ``load_state_dict()``, after which the
  next iteration skips the batches already consumed without reading them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from heartgpt.data.shards import (
    LABEL_KINDS,
    Manifest,
    ShardError,
    open_shard,
    read_column,
    validate_shard_dir,
)
from heartgpt.data.splits import SubjectSplit, read_split_file, split_subjects
from heartgpt.data.tokenizer import get_modality

SPLITS = ("train", "val", "test")
EVAL_SPLITS = ("all", *SPLITS)  # the rows the test (evaluation) loader may serve
_FIXED_STREAM = 2**31 - 1  # rng stream of the fixed (val/test) pre-training offsets


# --------------------------------------------------------------------------------- reading rows


class ShardRows:
    """Row access to the shards of a manifest; h5py files open lazily, once per process."""

    def __init__(self, manifest: Manifest) -> None:
        self.paths = [str(p) for p in manifest.paths]
        self.offsets = np.concatenate([[0], np.cumsum([s.rows for s in manifest.shards])])
        self.vocab_size = int(manifest.meta.vocab_size)
        self._files: dict[int, Any] | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_files"], state["_pid"] = None, None  # handles never cross processes
        return state

    @property
    def is_open(self) -> bool:
        return bool(self._files) and self._pid == os.getpid()

    def _file(self, i: int):
        if self._pid != os.getpid():  # first use here, or a forked worker: open our own
            self._files, self._pid = {}, os.getpid()
        assert self._files is not None
        f = self._files.get(i)
        if f is None:
            f = self._files[i] = open_shard(self.paths[i])
        return f

    def read(self, name: str, row: int, start: int, stop: int) -> np.ndarray:
        """``dataset[name][row, start:stop]`` of the global ``row``."""
        i = int(np.searchsorted(self.offsets, row, side="right")) - 1
        try:
            return self._file(i)[name][row - int(self.offsets[i]), start:stop]
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
            for f in self._files.values():
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
    """``(row, offset) -> {"tokens", "label" | "targets", "subject", "row"}``."""

    def __init__(
        self,
        rows: ShardRows,
        block_size: int,
        label_kind: str,
        subject_names: list[str],
        subject_codes: np.ndarray,
        labels: np.ndarray | None,
    ) -> None:
        self.rows = rows
        self.block_size = block_size
        self.label_kind = label_kind
        self.subject_names = subject_names
        self.subject_codes = subject_codes
        self.labels = labels

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        row, off = key
        stop = off + self.block_size
        item: dict[str, Any] = {
            "tokens": self.rows.tokens(row, off, stop),
            "subject": self.subject_names[self.subject_codes[row]],
            "row": row,
        }
        if self.label_kind == "sequence":
            assert self.labels is not None
            item["label"] = torch.tensor(self.labels[row], dtype=torch.float32)
        else:
            item["targets"] = torch.from_numpy(self.rows.read("targets", row, off, stop).astype(np.float32))
        return item


# --------------------------------------------------------------------------------- sampling


class WindowSampler(Sampler):
    """Yields this rank's ``(row, offset)`` keys for one epoch.

    Args:
        rows: global row indices of the split.
        segment_length: tokens per row (S).
        window: tokens read per item (block_size + 1 for pre-training, block_size for fine-tuning).
        seed: base seed; epoch ``e`` draws from ``np.random.default_rng([seed, e])``.
        shuffle: random order each epoch (train) or the order of ``rows`` (val/test).
        offsets: 'random' (fresh each epoch), 'fixed' (random once, same every epoch) or 'last'
            (the last ``window`` tokens of the row).
        rank, world_size: this process's slice; train truncates, val/test pad, to equal lengths.
        repeats: keys per row per epoch (pre-training ``windows_per_segment``).
        replacement: with ``shuffle``, draw the epoch's rows with replacement (as many draws as
            rows) instead of a permutation, as the released training code did.
    """

    def __init__(
        self,
        rows: np.ndarray,
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
        self.rows = np.repeat(np.asarray(rows, dtype=np.int64), repeats)
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

    def set_epoch(self, epoch: int) -> None:
        """Lightning calls this at the start of every training epoch."""
        self.epoch = int(epoch)

    def _num_keys(self) -> int:
        n, w = len(self.rows), self.world_size
        if w == 1:
            return n
        return (n // w) * w if self.shuffle else -(-n // w) * w

    def __len__(self) -> int:
        return self._num_keys() // self.world_size

    def global_keys(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, offsets) of all ranks for ``epoch``, in order, before padding or sharding."""
        rng = np.random.default_rng([self.seed, epoch])
        if self.shuffle and self.replacement:
            rows = self.rows[rng.integers(0, len(self.rows), len(self.rows))]
        elif self.shuffle:
            rows = self.rows[rng.permutation(len(self.rows))]
        else:
            rows = self.rows
        span = self.segment_length - self.window + 1
        if self.offsets == "last":
            offs = np.full(len(rows), span - 1, dtype=np.int64)
        elif self.offsets == "fixed":
            offs = np.random.default_rng([self.seed, _FIXED_STREAM]).integers(0, span, len(rows))
        else:
            offs = rng.integers(0, span, len(rows))
        return rows, offs

    def keys(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, offsets) of this rank for ``epoch``."""
        rows, offs = self.global_keys(epoch)
        total = self._num_keys()
        if total > len(rows):  # pad (val/test) by wrapping around
            idx = np.arange(total) % max(1, len(rows))
            rows, offs = rows[idx], offs[idx]
        rows, offs = rows[:total], offs[:total]
        return rows[self.rank :: self.world_size], offs[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rows, offs = self.keys(self.epoch)
        start, self.start = self.start, 0
        for i in range(start, len(rows)):
            yield int(rows[i]), int(offs[i])


class EvalSampler(WindowSampler):
    """The keys of an evaluation: every window of ``rows`` exactly once over all ranks.

    The global order (that of ``rows``; offsets drawn as :class:`WindowSampler` draws them) is
    cut into batches of ``batch_size`` and rank ``r`` takes batches ``r, r + world_size, ...``:
    each window is computed in the batch it would be in on one process, and nothing is padded
    or repeated (a rank may get one batch more than another). With fewer batches than ranks the
    keys are cut into ``world_size`` contiguous runs instead. Needs at least ``world_size``
    keys: an idle rank would hang the metrics' sync.
    """

    def __init__(self, rows: np.ndarray, segment_length: int, window: int, *, seed: int,
                 offsets: str, batch_size: int, rank: int = 0, world_size: int = 1,
                 repeats: int = 1) -> None:
        super().__init__(rows, segment_length, window, seed=seed, shuffle=False, offsets=offsets,
                         rank=rank, world_size=world_size, repeats=repeats)
        if len(self.rows) < world_size:
            raise ValueError(f"{len(self.rows)} window(s) cannot be spread over {world_size} "
                             "processes without leaving one idle: evaluate on fewer devices")
        self.batch_size = int(batch_size)

    def _indices(self) -> np.ndarray:
        """Positions in the global order of this rank's keys."""
        n, w = len(self.rows), self.world_size
        everything = np.arange(n, dtype=np.int64)
        if -(-n // self.batch_size) >= w:
            batches = [everything[i : i + self.batch_size] for i in range(0, n, self.batch_size)]
        else:
            batches = np.array_split(everything, w)
        mine = batches[self.rank :: w]
        return np.concatenate(mine) if mine else everything[:0]

    def __len__(self) -> int:
        return len(self._indices())

    def keys(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        rows, offs = self.global_keys(epoch)
        idx = self._indices()
        return rows[idx], offs[idx]


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


class _Index:
    """What setup learns from the shards: manifest, subject of each row, labels."""

    def __init__(self, manifest: Manifest, with_labels: bool) -> None:
        self.manifest = manifest
        code_of: dict[str, int] = {}
        codes, labels = [], []
        for path in manifest.paths:
            uniq, inverse = np.unique(read_column(path, "subject"), return_inverse=True)
            mapping = np.array([code_of.setdefault(str(u), len(code_of)) for u in uniq], dtype=np.int32)
            codes.append(mapping[inverse])
            if with_labels:
                labels.append(read_column(path, "label").astype(np.float32))
        self.code_of = code_of
        self.subject_names = list(code_of)
        self.subject_codes = np.concatenate(codes)  # (N,) int32
        self.labels = np.concatenate(labels) if with_labels else None  # (N,) float32

    def subject_classes(self) -> dict[str, int]:
        """Each subject's majority label (rounded mean), for stratified splits."""
        assert self.labels is not None
        sums = np.bincount(self.subject_codes, weights=self.labels, minlength=len(self.subject_names))
        counts = np.bincount(self.subject_codes, minlength=len(self.subject_names))
        return {s: int(np.round(sums[i] / counts[i])) for i, s in enumerate(self.subject_names)}

    def rows_of(self, subjects: tuple[str, ...]) -> np.ndarray:
        wanted = np.array([self.code_of[s] for s in subjects], dtype=np.int32)
        return np.flatnonzero(np.isin(self.subject_codes, wanted)).astype(np.int64)


def _open_index(
    shard_dir: str | Path,
    modality: str,
    vocab_size: int | None,
    label_kinds: tuple[str, ...],
    min_length: int,
    need: str,
    with_labels: bool,
) -> _Index:
    manifest = validate_shard_dir(shard_dir, modality=modality, label_kind=label_kinds)
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
    return _Index(manifest, with_labels)


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


def _split(index: _Index, seed: int, val_fraction: float, test_fraction: float, folds, fold: int,
           stratify: bool, split_file: str | None = None) -> SubjectSplit:
    if split_file:
        return read_split_file(split_file, index.subject_names)
    classes = index.subject_classes() if stratify and index.labels is not None else None
    return split_subjects(
        index.subject_names, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction,
        folds=folds, fold=fold, subject_classes=classes,
    )


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
        self._index: _Index | None = None
        self._split: SubjectSplit | None = None
        self._rows: dict[str, np.ndarray] = {}
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

    def _open(self) -> tuple[_Index, bool]:
        """The shard set's index (checked for this DataModule) and whether to stratify."""
        raise NotImplementedError

    def _make_dataset(self, index: _Index) -> Dataset:
        raise NotImplementedError

    def _sampler_options(self, train: bool) -> dict[str, Any]:
        """:class:`WindowSampler` arguments that differ between the DataModules."""
        raise NotImplementedError

    def prepare_data(self) -> None:
        if self.verify_checksums:
            validate_shard_dir(self.shard_dir, modality=self.modality, verify_checksums=True)

    def setup(self, stage: str | None = None) -> None:
        if self._index is not None:
            return
        index, stratify = self._open()
        try:
            self._split = _split(index, self.seed, self.val_fraction, self.test_fraction,
                                 self.folds, self.fold, stratify=stratify,
                                 split_file=self.split_file)
            self._rows = {s: index.rows_of(self._split.of(s)) for s in SPLITS}
        except ValueError:
            if self.eval_split != "all":
                raise
            self._split, self._rows = None, {}  # e.g. one subject: nothing to split, all to score
        self._rows["all"] = np.arange(len(index.subject_codes), dtype=np.int64)
        self._dataset = self._make_dataset(index)
        self._index = index

    @property
    def manifest(self) -> Manifest:
        self.setup()
        assert self._index is not None
        return self._index.manifest

    @property
    def split(self) -> SubjectSplit:
        """Subjects of each split (for leak checks and cross-validation)."""
        self.setup()
        if self._split is None:
            raise ValueError(f"{self.shard_dir}: its subjects cannot be split with these "
                             "settings (split=all, which scores every row, needs no split)")
        return self._split

    def rows(self, split: str) -> np.ndarray:
        """Global row indices of ``split`` (``all``: every row)."""
        if split != "all":
            _ = self.split  # raises when the subjects could not be split
        self.setup()
        return self._rows[split]

    def _loader(self, split: str, evaluate: bool = False) -> DataLoader | list:
        """Windows of ``split``: training (shuffled, random offsets), validation (fixed
        windows, padded across ranks) or, with ``evaluate``, an :class:`EvalSampler`'s."""
        rows = self.rows(split)
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

    def _open(self) -> tuple[_Index, bool]:
        index = _open_index(self.shard_dir, self.modality, self.vocab_size, LABEL_KINDS,
                            self.window, "block_size + 1", with_labels=False)
        return index, False

    def _make_dataset(self, index: _Index) -> Dataset:
        return PretrainWindows(ShardRows(index.manifest), self.block_size)

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

    def _open(self) -> tuple[_Index, bool]:
        index = _open_index(self.shard_dir, self.modality, self.vocab_size, (self.label_kind,),
                            self.window, "block_size", with_labels=self.label_kind == "sequence")
        return index, self.stratify

    def _make_dataset(self, index: _Index) -> Dataset:
        return FinetuneWindows(ShardRows(index.manifest), self.block_size, self.label_kind,
                               index.subject_names, index.subject_codes, index.labels)

    def _sampler_options(self, train: bool) -> dict[str, Any]:
        return {"offsets": "random" if train else "last"}
