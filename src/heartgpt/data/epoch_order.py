"""Epoch orders that are computed, not stored: memory flat in the number of rows.

An epoch of a shard set with 200 M rows cannot be a permuted array of keys (1.6 GB of int64 in
every process). Here a key's position ``p`` in the epoch is mapped to its row by a seeded
bijection of ``[0, n)`` (:class:`BlockShuffle`: blocks of rows in a random order, rows shuffled
within groups of blocks, each by a :class:`SeededPermutation`, a Feistel network with cycle
walking) and its window offset by a hash of ``(seed, epoch, p)`` (:func:`mix`), so any slice of
any epoch (one rank's, one resumed from the middle) is computed on demand, in chunks, from
``(seed, epoch)`` alone. Rows are addressed through a :class:`RowRanges` (the rows of a split as
sorted ranges, as many as the split has runs of one subject), never through a per-row array.
"""

from __future__ import annotations

import numpy as np

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijective, well-mixing map of uint64 (vectorised)."""
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def mix(*parts: int | np.ndarray) -> np.ndarray:
    """A 64-bit hash of integers (scalars or arrays, broadcast): the same inputs always give
    the same outputs, on every machine and numpy version."""
    with np.errstate(over="ignore"):
        h = np.zeros((), dtype=np.uint64)
        for part in parts:
            value = np.asarray(part).astype(np.int64).astype(np.uint64)
            h = _splitmix(h ^ _splitmix(value))
    return h


class SeededPermutation:
    """A bijection of ``[0, n)`` chosen by ``key`` (a tuple of ints), applied to arrays.

    Four Feistel rounds on the smallest even number of bits covering ``n`` give a permutation
    of ``[0, 2^bits)`` (under ``4n``); values that land outside ``[0, n)`` are sent through
    again (cycle walking) until they land inside, which keeps it a bijection of ``[0, n)``.
    """

    ROUNDS = 4

    def __init__(self, n: int, key: tuple[int, ...]) -> None:
        if n <= 0:
            raise ValueError(f"a permutation needs n > 0, got {n}")
        self.n = int(n)
        bits = max(2, int(self.n - 1).bit_length())
        self.half = (bits + 1) // 2
        self.mask = np.uint64((1 << self.half) - 1)
        self.round_keys = [mix(*key, r) for r in range(self.ROUNDS)]

    def _feistel(self, x: np.ndarray) -> np.ndarray:
        half = np.uint64(self.half)
        left, right = x >> half, x & self.mask
        with np.errstate(over="ignore"):
            for k in self.round_keys:
                left, right = right, left ^ (_splitmix(right ^ k) & self.mask)
        return (left << half) | right

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        """``perm[positions]`` (int64) without ever building ``perm``."""
        x = np.asarray(positions, dtype=np.int64).astype(np.uint64)
        out = self._feistel(x)
        outside = out >= np.uint64(self.n)
        while outside.any():
            out[outside] = self._feistel(out[outside])
            outside = out >= np.uint64(self.n)
        return out.astype(np.int64)


class RowRanges:
    """A set of global rows held as disjoint ranges ``[start, start + length)``.

    Position ``i`` (``0 <= i < len(self)``) is the ``i``-th row of the ranges in the order
    given: ascending for a split's rows, a shuffled order of blocks in :class:`BlockShuffle`.
    """

    def __init__(self, starts: np.ndarray, lengths: np.ndarray) -> None:
        starts = np.asarray(starts, dtype=np.int64)
        lengths = np.asarray(lengths, dtype=np.int64)
        keep = lengths > 0
        self.starts, self.lengths = starts[keep], lengths[keep]
        self.cumulative = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)

    @classmethod
    def from_rows(cls, rows: np.ndarray) -> RowRanges:
        """The ranges of a sorted array of distinct rows (small sets, tests)."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return cls(rows, rows)
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        starts = rows[np.concatenate([[0], breaks])]
        ends = rows[np.concatenate([breaks - 1, [rows.size - 1]])] + 1
        return cls(starts, ends - starts)

    def __len__(self) -> int:
        return int(self.cumulative[-1])

    def rows_at(self, positions: np.ndarray) -> np.ndarray:
        """The rows at ``positions`` (int64 array of positions in ``[0, len(self))``)."""
        positions = np.asarray(positions, dtype=np.int64)
        r = np.searchsorted(self.cumulative, positions, side="right") - 1
        return self.starts[r] + (positions - self.cumulative[r])

    def to_array(self) -> np.ndarray:
        """Every row, ascending (materialised: for small sets)."""
        return self.rows_at(np.arange(len(self), dtype=np.int64))


class BlockShuffle:
    """A seeded bijection of ``[0, n)`` whose consecutive outputs stay within a few blocks.

    The keys are cut into blocks of ``block`` (the last may be short); the full blocks are put
    in a random order (the short one stays last) and dealt into groups of ``group`` blocks;
    positions ``[g * block * group, ...)`` are a random permutation of group ``g``'s keys. So a
    stretch of the epoch reads from ``group`` blocks (about as many shards) at a time, and a
    reader keeps few files open, while every key is still visited once. With ``n <= block *
    group`` it is one random permutation of everything. ``replacement``: each position draws a
    key of its group at random instead (keys may repeat or be missed).
    """

    def __init__(self, n: int, key: tuple[int, ...], *, block: int = 4096, group: int = 16,
                 replacement: bool = False) -> None:
        if n <= 0:
            raise ValueError(f"a shuffle needs n > 0, got {n}")
        self.n, self.block, self.group, self.key = int(n), int(block), int(group), key
        self.replacement = replacement
        self.full_blocks = self.n // self.block
        self.num_blocks = -(-self.n // self.block)
        self.span = self.block * self.group
        self._blocks = SeededPermutation(self.full_blocks, (*key, -1)) if self.full_blocks else None

    def _members(self, g: int) -> tuple[np.ndarray, np.ndarray]:
        """Block ids of group ``g`` and their sizes."""
        slots = np.arange(g * self.group, min((g + 1) * self.group, self.num_blocks), dtype=np.int64)
        ids = slots.copy()
        full = slots < self.full_blocks
        if self._blocks is not None:
            ids[full] = self._blocks(slots[full])
        sizes = np.where(ids < self.full_blocks, self.block, self.n - self.full_blocks * self.block)
        return ids, sizes

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        """The keys at ``positions`` (int64 array in ``[0, n)``)."""
        p = np.asarray(positions, dtype=np.int64)
        groups, within = p // self.span, p % self.span
        out = np.empty_like(p)
        for g in np.unique(groups).tolist():
            sel = groups == g
            ids, sizes = self._members(g)
            keys = RowRanges(ids * self.block, sizes)  # the group's blocks, in their order
            if self.replacement:
                idx = (mix(*self.key, g, within[sel]) % np.uint64(len(keys))).astype(np.int64)
            else:
                idx = SeededPermutation(len(keys), (*self.key, g))(within[sel])
            out[sel] = keys.rows_at(idx)
        return out
