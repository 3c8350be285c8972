"""The generated epoch order (issue 18): every key once per epoch over ranks and workers, the
same for the same (seed, epoch), resumable mid-epoch, from memory that does not grow with rows."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from heartgpt.data.epoch_order import BlockShuffle, RowRanges, SeededPermutation
from heartgpt.data.row_index import RowIndex
from heartgpt.data.samplers import EvalSampler, ResumableDataLoader, WindowSampler
from heartgpt.data.splits import split_codes

SEGMENT, WINDOW = 64, 17


class _Keys(Dataset):
    """Returns the key it is asked for and which worker read it."""

    def __len__(self) -> int:
        return 10**9

    def __getitem__(self, key):
        info = get_worker_info()
        return torch.tensor([key[0], key[1], info.id if info else -1])


def _epoch(rows: RowRanges, epoch: int, *, seed: int = 5, repeats: int = 2, world: int = 2,
           workers: int = 2, batch: int = 8) -> dict[int, list[tuple[int, int, int]]]:
    """(row, offset, worker) of every key each rank's DataLoader yields in ``epoch``."""
    out = {}
    for rank in range(world):
        sampler = WindowSampler(rows, SEGMENT, WINDOW, seed=seed, shuffle=True, offsets="random",
                                rank=rank, world_size=world, repeats=repeats)
        sampler.set_epoch(epoch)
        loader = DataLoader(_Keys(), sampler=sampler, batch_size=batch, num_workers=workers)
        out[rank] = [tuple(k) for b in loader for k in b.tolist()]
    return out


def test_every_key_once_per_epoch_over_two_ranks_and_two_workers():
    # 3 runs of rows with gaps (a split's subjects), 2 windows per row: 2 x 151 keys
    rows = RowRanges(np.array([0, 100, 400]), np.array([50, 1, 100]))
    per_rank = _epoch(rows, epoch=3)
    keys = [k for rank in per_rank.values() for k in rank]
    assert len(per_rank[0]) == len(per_rank[1]) == 151
    assert Counter(r for r, _, _ in keys) == {r: 2 for r in rows.to_array().tolist()}
    assert all(0 <= off <= SEGMENT - WINDOW for _, off, _ in keys)
    for rank in per_rank.values():  # each rank's keys were read by both of its workers
        assert {w for _, _, w in rank} == {0, 1}
    again = _epoch(rows, epoch=3)
    assert again == per_rank  # the same (seed, epoch): the same keys in the same order
    other = _epoch(rows, epoch=4)
    assert [k[:2] for k in other[0]] != [k[:2] for k in per_rank[0]]  # a new epoch, a new order
    assert Counter(r for rank in other.values() for r, _, _ in rank) == Counter(r for r, _, _ in keys)


def test_an_odd_key_count_drops_fewer_than_world_size_keys():
    rows = RowRanges(np.array([7]), np.array([101]))
    per_rank = _epoch(rows, epoch=0, repeats=1, world=2, workers=0)
    seen = [r for rank in per_rank.values() for r, _, _ in rank]
    assert len(seen) == 100 and len(set(seen)) == 100  # 101 keys: one left out, none twice


@pytest.mark.parametrize("workers", [0, 2])
def test_a_mid_epoch_resume_continues_the_epoch_exactly(workers):
    rows = RowRanges(np.array([0, 1000]), np.array([300, 77]))
    def loader():
        s = WindowSampler(rows, SEGMENT, WINDOW, seed=1, shuffle=True, offsets="random",
                          rank=1, world_size=2, repeats=3)
        return ResumableDataLoader(_Keys(), sampler=s, batch_size=16, num_workers=workers)
    whole = loader()
    whole.sampler.set_epoch(2)
    full = [b[:, :2] for b in whole]
    fresh = loader()
    fresh.load_state_dict({"epoch": 2, "batches": 13})
    rest = [b[:, :2] for b in fresh]
    assert len(rest) == len(full) - 13
    assert all(torch.equal(a, b) for a, b in zip(rest, full[13:], strict=True))


def test_the_order_is_computed_not_stored():
    """A 200 M-key epoch: the sampler holds no per-key array, and any slice is cheap."""
    rows = RowRanges(np.arange(0, 200_000_000, 50), np.full(4_000_000, 50))
    sampler = WindowSampler(rows, SEGMENT, WINDOW, seed=0, shuffle=True, offsets="random",
                            rank=3, world_size=8)
    held = sum(a.nbytes for a in (rows.starts, rows.lengths, rows.cumulative))
    assert held < 100e6 and len(sampler) == 25_000_000  # 4 M runs, not 200 M rows
    sampler.start = 24_999_990  # the end of the epoch, without computing what comes before
    tail = list(sampler)
    assert len(tail) == 10 and all(0 <= r < 200_000_000 for r, _ in tail)
    assert sampler.keys_at(0, sampler.positions(24_999_990, 25_000_000))[0].tolist() == [r for r, _ in tail]


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 1000, 4097])
def test_seeded_permutation_is_a_bijection(n):
    p = SeededPermutation(n, (11, 0))
    image = p(np.arange(n))
    assert sorted(image.tolist()) == list(range(n))
    if n > 8:
        assert not np.array_equal(image, np.arange(n))
        assert not np.array_equal(image, SeededPermutation(n, (11, 1))(np.arange(n)))


@pytest.mark.parametrize("world,batch,n", [(1, 4, 10), (2, 4, 10), (3, 4, 10), (4, 4, 10),
                                           (2, 3, 2), (3, 5, 40), (2, 8, 9)])
def test_eval_sampler_keys_are_those_of_one_process(world, batch, n):
    rows = np.arange(5, 5 + n)
    parts = [EvalSampler(rows, SEGMENT, WINDOW, seed=0, offsets="fixed", batch_size=batch,
                         rank=r, world_size=world) for r in range(world)]
    got = [list(s) for s in parts]
    assert [len(g) for g in got] == [len(s) for s in parts]
    assert sorted(k for g in got for k in g) == sorted(
        zip(*[a.tolist() for a in WindowSampler(rows, SEGMENT, WINDOW, seed=0, shuffle=False,
                                                offsets="fixed").global_keys(0)], strict=True))


def test_row_index_runs_split_by_subject():
    subjects = np.array(["b"] * 3 + ["a"] * 2 + ["b"] * 4 + ["c"])
    index = RowIndex.from_rows(subjects)
    assert index.names() == ["a", "b", "c"] and len(index.runs) == 4
    assert index.rows_per_subject().tolist() == [2, 7, 1]
    assert index.rows_of(np.array([False, True, False])).to_array().tolist() == [0, 1, 2, 5, 6, 7, 8]
    assert [index.subject_of(r) for r in range(10)] == subjects.tolist()
    joined = RowIndex.concatenate([index, RowIndex.from_rows(np.array(["c", "d"]))])
    assert joined.names() == ["a", "b", "c", "d"] and joined.total_rows == 12
    assert joined.rows_per_subject().tolist() == [2, 7, 2, 1] and len(joined.runs) == 5


def test_split_codes_scale_to_millions_of_subjects():
    codes = split_codes(4_000_000, seed=0, val_fraction=0.05, test_fraction=0.05)
    assert codes.dtype == np.int8 and codes.nbytes == 4_000_000
    assert np.bincount(codes).tolist() == [3_610_000, 190_000, 200_000]


def test_datamodule_ranks_cover_the_split_once(tmp_path):
    """Through the DataModule (rank from the trainer), 2 ranks x 2 workers."""
    from heartgpt.data import PretrainDataModule
    from heartgpt.data.shard_writer import ShardWriter
    from heartgpt.data.shards import ShardMeta

    meta = ShardMeta(modality="ecg", sample_rate=100.0, vocab_size=101, segment_length=SEGMENT,
                     label_kind="unlabelled", source="unit test")
    n = 100
    with ShardWriter(tmp_path, meta, rows_per_shard=32) as w:
        tokens = np.tile(np.arange(n)[:, None], (1, SEGMENT))  # row r holds token r
        w.add(tokens, [f"s{i // 5:02d}" for i in range(n)], [f"r{i}" for i in range(n)], np.zeros(n))
    seen = []
    for rank in (0, 1):
        dm = PretrainDataModule(str(tmp_path), "ecg", block_size=16, global_batch_size=8, seed=2,
                                val_fraction=0.1, test_fraction=0.1, num_workers=2,
                                windows_per_segment=2)
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=2)
        seen += [int(row) for x, _ in dm.train_dataloader() for row in x[:, 0]]
    assert Counter(seen) == {int(r): 2 for r in dm.rows("train")}


def test_block_shuffle_visits_every_key_once_and_reads_few_blocks_at_a_time():
    n, block, group = 10_000 * 7 + 123, 100, 4  # 700 full blocks and a short one
    shuffle = BlockShuffle(n, (3, 1), block=block, group=group)
    keys = shuffle(np.arange(n))
    assert np.array_equal(np.sort(keys), np.arange(n))
    blocks = keys // block
    for start in range(0, n, block * group):  # each stretch of the epoch: one group of blocks
        assert len(np.unique(blocks[start : start + block * group])) <= group
    assert len(np.unique(blocks[: block * group * 3])) == 3 * group  # ... in a random order
    assert not np.array_equal(np.unique(blocks[: block * group]), np.arange(group))
    small = BlockShuffle(300, (3, 1), block=block, group=group)(np.arange(300))
    assert np.array_equal(np.sort(small), np.arange(300)) and small[:100].max() >= 100  # global
    drawn = BlockShuffle(n, (3, 1), block=block, group=group, replacement=True)(np.arange(n))
    assert len(np.unique(drawn)) < n and (drawn // block)[: block * group].tolist() != []


def test_a_reader_keeps_at_most_max_open_shards_open(tmp_path, monkeypatch):
    from heartgpt.data.shard_writer import ShardWriter
    from heartgpt.data.shards import ShardMeta, validate_shard_dir
    from heartgpt.data.windows import ShardRows

    meta = ShardMeta(modality="ecg", sample_rate=100.0, vocab_size=101, segment_length=8,
                     label_kind="unlabelled", source="unit test")
    with ShardWriter(tmp_path, meta, rows_per_shard=5) as w:  # 8 shards
        w.add(np.tile(np.arange(40)[:, None], (1, 8)), ["s"] * 40, ["r"] * 40, np.zeros(40))
    monkeypatch.setattr(ShardRows, "MAX_OPEN", 3)
    rows = ShardRows(validate_shard_dir(tmp_path))
    for row in [0, 39, 7, 12, 21, 33, 0, 26, 39]:
        assert rows.tokens(row, 0, 8).tolist() == [row] * 8
        assert len(rows._files) <= 3
    assert list(rows._files) == [0, 5, 7]  # the three used last, oldest first


def test_setup_stats_the_shards_and_a_reader_checks_each_on_first_open(tmp_path):
    """Setup does not open 4 k shards (a size check each); the first read of a shard whose
    schema is wrong still stops with its name."""
    import json

    import h5py

    from heartgpt.data import FinetuneDataModule
    from heartgpt.data.shard_writer import ShardWriter
    from heartgpt.data.shards import ShardError, ShardMeta, sha256_file

    meta = ShardMeta(modality="ecg", sample_rate=100.0, vocab_size=101, segment_length=8,
                     label_kind="sequence", source="unit test")
    with ShardWriter(tmp_path, meta, rows_per_shard=10) as w:
        w.add(np.ones((40, 8)), [f"s{i // 4}" for i in range(40)], ["r"] * 40, np.zeros(40),
              label=np.arange(40) % 2)
    bad = tmp_path / "shard-00002.h5"
    with h5py.File(bad, "r+") as f:
        f.attrs["segment_length"] = 9  # a schema the manifest does not describe
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["shards"][2].update(bytes=bad.stat().st_size, sha256=sha256_file(bad))
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    dm = FinetuneDataModule(str(tmp_path), "ecg", block_size=8, label_kind="sequence",
                            global_batch_size=4, seed=0, val_fraction=0.1, test_fraction=0.1,
                            verify_checksums=False, split="all")
    dm.setup()  # sizes match: setup cannot tell
    with pytest.raises(ShardError, match=r"shard-00002\.h5: attribute segment_length=9 but the "
                                         r"manifest says 8"):
        list(dm.test_dataloader())


def test_a_set_written_before_the_row_index_still_loads(tmp_path):
    """heartgpt <= 0.3 manifests list subjects per shard and have no index files."""
    import json

    from heartgpt.data import FinetuneDataModule
    from heartgpt.data.row_index import INDEX_FILES
    from heartgpt.data.shard_writer import ShardWriter
    from heartgpt.data.shards import ShardMeta, read_manifest

    meta = ShardMeta(modality="ecg", sample_rate=100.0, vocab_size=101, segment_length=8,
                     label_kind="sequence", source="unit test")
    subjects = [f"s{i // 4}" for i in range(40)]
    with ShardWriter(tmp_path, meta, rows_per_shard=6) as w:
        w.add(np.ones((40, 8)), subjects, ["r"] * 40, np.zeros(40), label=np.arange(40) // 4 % 2)
    new = FinetuneDataModule(str(tmp_path), "ecg", block_size=8, label_kind="sequence",
                             global_batch_size=4, seed=0, val_fraction=0.2, test_fraction=0.2)
    expected = {s: new.rows(s).tolist() for s in ("train", "val", "test")}
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    del manifest["index"], manifest["num_subjects"]
    for i, shard in enumerate(manifest["shards"]):
        names, counts = np.unique(subjects[6 * i : 6 * i + 6], return_counts=True)
        shard["subjects"] = dict(zip(names.tolist(), counts.tolist(), strict=True))
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    for name in INDEX_FILES:
        (tmp_path / name).unlink()
    assert read_manifest(tmp_path).index is None
    old = FinetuneDataModule(str(tmp_path), "ecg", block_size=8, label_kind="sequence",
                             global_batch_size=4, seed=0, val_fraction=0.2, test_fraction=0.2)
    assert {s: old.rows(s).tolist() for s in ("train", "val", "test")} == expected
    assert old.manifest.subjects == {f"s{i}": 4 for i in range(10)}
    batch = next(iter(old.train_dataloader()))
    assert batch["label"].tolist() == [float(int(s[1:]) % 2) for s in batch["subject"]]
