"""Which windows a loader yields, and in what order: :class:`WindowSampler` (one rank's
``(row, offset)`` keys of an epoch, computed on demand from ``(seed, epoch)``),
:class:`EvalSampler` (every window once over all ranks, in one process's batches) and
:class:`ResumableDataLoader` (a train loader Lightning can checkpoint and resume mid-epoch).

All randomness of the DataModules lives here, in the main process; the datasets
(:mod:`heartgpt.data.windows`) only read what a key names, so batches are identical for any
``num_workers``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset, Sampler

from heartgpt.data.epoch_order import BlockShuffle, RowRanges, mix

_FIXED_STREAM = 2**31 - 1  # hash streams: fixed (val/test) offsets, random offsets
_OFFSET_STREAM = 2**31 - 2


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
