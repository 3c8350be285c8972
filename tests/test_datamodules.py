"""DataModules: subject splits, windows, workers, DDP slices, resumable train loaders."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning.fabric.utilities.types import _Stateful
from lightning.pytorch.utilities.combined_loader import CombinedLoader

from heartgpt.data import (
    FinetuneDataModule,
    PretrainDataModule,
    ShardError,
    ShardMeta,
    ShardWriter,
    num_folds,
    split_subjects,
)
from heartgpt.data.samplers import WindowSampler
from heartgpt.data.shards import read_shards

S = 40  # tokens per segment
N_SUBJECTS, PER_SUBJECT = 10, 6


def _write(out: Path, label_kind: str, modality: str = "ecg", seg: int = S) -> Path:
    rng = np.random.default_rng(0)
    n = N_SUBJECTS * PER_SUBJECT
    meta = ShardMeta(modality=modality, sample_rate=100.0, vocab_size=101, segment_length=seg,
                     label_kind=label_kind, source="unit test")
    subjects = [f"subj{i // PER_SUBJECT:02d}" for i in range(n)]
    label = np.array([float((i // PER_SUBJECT) % 2) for i in range(n)])
    with ShardWriter(out, meta, rows_per_shard=13) as w:
        w.add(rng.integers(0, 101, (n, seg)), subjects, [f"rec{i}" for i in range(n)], np.zeros(n),
              label=label if label_kind == "sequence" else None,
              targets=rng.integers(0, 2, (n, seg)) if label_kind == "token" else None)
    return out


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("shards")
    return {t: _write(root / t, t) for t in ("unlabelled", "sequence", "token")}


def _pre(shard_dir: Path, **kw) -> PretrainDataModule:
    args = dict(shard_dir=str(shard_dir), modality="ecg", block_size=16, global_batch_size=4, seed=3,
                val_fraction=0.2, test_fraction=0.2, vocab_size=101)
    return PretrainDataModule(**{**args, **kw})


def _fine(shard_dir: Path, label_kind: str, **kw) -> FinetuneDataModule:
    args = dict(shard_dir=str(shard_dir), modality="ecg", block_size=32, label_kind=label_kind,
                global_batch_size=5, seed=3, val_fraction=0.2, test_fraction=0.2)
    return FinetuneDataModule(**{**args, **kw})


def _windows(loader) -> list[tuple]:
    return [tuple(row.tolist()) for x, _ in loader for row in x]


# --------------------------------------------------------------------------------- splits


def test_split_by_subject_has_no_overlap():
    subjects = [f"s{i}" for i in range(23)]
    for folds, k in [(None, 0), (5, 0), (5, 4), ("loso", 7)]:
        sp = split_subjects(subjects, seed=1, val_fraction=0.2, test_fraction=0.2, folds=folds, fold=k)
        sp.assert_disjoint()
        assert sorted(sp.train + sp.val + sp.test) == sorted(subjects)
    assert split_subjects(subjects, seed=1, val_fraction=0.2) == split_subjects(subjects, seed=1, val_fraction=0.2)


def test_kfold_covers_every_subject_once_and_loso_holds_out_subject_k():
    subjects = [f"s{i:02d}" for i in range(11)]
    tests = [split_subjects(subjects, seed=0, val_fraction=0.1, folds=4, fold=k).test for k in range(4)]
    assert sorted(s for t in tests for s in t) == subjects
    assert num_folds("loso", 11) == 11 and num_folds(4, 11) == 4
    for k in range(11):
        sp = split_subjects(list(reversed(subjects)), seed=0, val_fraction=0.1, folds="loso", fold=k)
        assert sp.test == (sorted(subjects)[k],)
        assert subjects[k] not in sp.train + sp.val
    with pytest.raises(ValueError, match="fold must be in 0..10"):
        split_subjects(subjects, seed=0, val_fraction=0.1, folds="loso", fold=11)


def test_stratified_folds_balance_classes():
    subjects = [f"s{i:02d}" for i in range(20)]
    classes = {s: int(i < 6) for i, s in enumerate(subjects)}  # 6 positives, 14 negatives
    for k in range(3):
        sp = split_subjects(subjects, seed=5, val_fraction=0.0, folds=3, fold=k, subject_classes=classes)
        assert sum(classes[s] for s in sp.test) == 2


def test_datamodule_split_matches_rows(shards):
    dm = _fine(shards["sequence"], "sequence", folds="loso", fold=4)
    dm.setup()
    assert dm.split.test == ("subj04",)
    data = read_shards(shards["sequence"])
    for name in ("train", "val", "test"):
        assert set(data.subject[dm.rows(name)]) == set(dm.split.of(name))
    assert len(dm.rows("test")) == PER_SUBJECT


# --------------------------------------------------------------------------------- pre-training


def test_pretrain_batches_are_shifted_windows_of_segments(shards):
    dm = _pre(shards["unlabelled"])
    dm.setup()
    data = read_shards(shards["unlabelled"])
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    rows = {tuple(r) for r in data.tokens[dm.rows("train")].tolist()}
    for xi, yi in zip(x, y, strict=True):
        w = torch.cat([xi, yi[-1:]]).tolist()
        assert any(_contains(r, w) for r in rows)


def _contains(row: tuple, w: list) -> bool:
    return any(list(row[i : i + len(w)]) == w for i in range(len(row) - len(w) + 1))


def test_pretrain_windows_fresh_each_epoch_and_reproducible(shards):
    a, b = _pre(shards["unlabelled"]), _pre(shards["unlabelled"])
    la, lb = a.train_dataloader(), b.train_dataloader()
    e0 = _windows(la)
    la.sampler.set_epoch(1)
    e1 = _windows(la)
    assert e0 != e1
    assert e0 == _windows(lb)  # same seed, same epoch -> same windows
    lb.sampler.set_epoch(1)
    assert e1 == _windows(lb)
    v = a.val_dataloader()
    first = _windows(v)
    v.sampler.set_epoch(5)
    assert _windows(v) == first  # validation windows are fixed


def test_two_workers_return_each_window_once(shards):
    dm0, dm2 = _pre(shards["unlabelled"]), _pre(shards["unlabelled"], num_workers=2)
    w0, w2 = _windows(dm0.train_dataloader()), _windows(dm2.train_dataloader())
    assert w2 == w0  # the sampler decides; workers only read
    assert len(w2) == len(set(w2)) == len(dm2.rows("train"))
    fm = _fine(shards["sequence"], "sequence", num_workers=2)
    rows = [r for b in fm.train_dataloader() for r in b["row"].tolist()]
    assert sorted(rows) == sorted(fm.rows("train").tolist())


def test_ddp_ranks_see_disjoint_parts(shards):
    parts = {}
    for split in ("train", "val"):
        for rank in (0, 1):
            dm = _fine(shards["sequence"], "sequence", global_batch_size=2)  # 1 per rank
            dm.trainer = SimpleNamespace(global_rank=rank, world_size=2)
            loader = dm.train_dataloader() if split == "train" else dm.val_dataloader()
            parts[split, rank] = [b["row"].item() for b in loader]
    train0, train1 = parts["train", 0], parts["train", 1]
    assert len(train0) == len(train1) and not set(train0) & set(train1)
    assert len(train0) + len(train1) >= len(dm.rows("train")) - 1
    val0, val1 = parts["val", 0], parts["val", 1]
    assert len(val0) == len(val1)  # padded to equal length
    assert set(val0) | set(val1) == set(dm.rows("val").tolist())


def test_ddp_needs_use_distributed_sampler_off(shards):
    dm = _pre(shards["unlabelled"])
    dm.trainer = SimpleNamespace(global_rank=0, world_size=2,
                                 _accelerator_connector=SimpleNamespace(use_distributed_sampler=True))
    with pytest.raises(RuntimeError, match="use_distributed_sampler=False"):
        dm.train_dataloader()


def test_h5_files_open_lazily_in_the_reading_process(shards):
    dm = _pre(shards["unlabelled"], num_workers=2)
    loader = dm.train_dataloader()
    rows = loader.dataset.rows
    _windows(loader)
    assert not rows.is_open  # only the workers opened files
    _windows(_pre(shards["unlabelled"]).train_dataloader())  # in-process reading opens them here


# --------------------------------------------------------------------------------- checks


def test_segment_shorter_than_block_is_a_clear_error(tmp_path, shards):
    short = _write(tmp_path / "short", "unlabelled", seg=16)
    with pytest.raises(ShardError, match=r"short: segments hold 16 tokens but block_size \+ 1 = 17"):
        _pre(short).setup()
    with pytest.raises(ShardError, match="segments hold 16 tokens but block_size = 32"):
        _fine(_write(tmp_path / "short2", "sequence", seg=16), "sequence").setup()
    with pytest.raises(ShardError, match="'ecg' data but this run is 'ppg'"):
        _pre(shards["unlabelled"], modality="ppg").setup()
    with pytest.raises(ShardError, match="'unlabelled' \\(label_kind\\)"):
        _fine(shards["unlabelled"], "sequence").setup()
    with pytest.raises(ShardError, match="vocab_size 101, the model expects 102"):
        _pre(shards["unlabelled"], vocab_size=102).setup()


def test_prepare_data_verifies_checksums(tmp_path):
    d = _write(tmp_path / "s", "unlabelled")
    path = d / "shard-00001.h5"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=r"shard-00001\.h5: sha256"):
        _pre(d).prepare_data()
    _pre(d, verify_checksums=False).prepare_data()


@pytest.mark.parametrize("label_kind", ["unlabelled", "sequence"])
def test_a_token_outside_the_vocabulary_is_refused_on_read(tmp_path, label_kind):
    """Checksums off and a row damaged: the batch that reads it names the shard and row,
    rather than an index error in the embedding later."""
    import h5py

    d = _write(tmp_path / "s", label_kind)
    with h5py.File(d / "shard-00001.h5", "r+") as f:
        f["tokens"][3, :] = 245
    dm = (_pre(d, verify_checksums=False, val_fraction=0.0, test_fraction=0.0)
          if label_kind == "unlabelled" else
          _fine(d, label_kind, verify_checksums=False, val_fraction=0.0, test_fraction=0.0))
    dm.prepare_data()
    dm.setup("fit")
    with pytest.raises(ShardError, match=r"shard-00001\.h5: row 3 holds token 245, outside the "
                                         r"vocabulary 0\.\.100"):
        for _ in dm.train_dataloader():
            pass


# --------------------------------------------------------------------------------- fine-tuning


def test_finetune_sequence_and_token_batches(shards):
    data = read_shards(shards["token"])
    fm = _fine(shards["token"], "token")
    b = next(iter(fm.train_dataloader()))
    assert b["tokens"].shape == b["targets"].shape == (5, 32)
    assert b["tokens"].dtype == torch.int64 and b["targets"].dtype == torch.float32
    assert b["row"].dtype == torch.int64 and isinstance(b["subject"], list)
    # val/test: the last block_size tokens of each segment
    v = next(iter(fm.val_dataloader()))
    rows = v["row"].numpy()
    np.testing.assert_array_equal(v["tokens"].numpy(), data.tokens[rows, -32:])
    np.testing.assert_array_equal(v["targets"].numpy(), data.targets[rows, -32:])
    assert v["subject"] == list(data.subject[rows])
    sm = _fine(shards["sequence"], "sequence")
    s = next(iter(sm.test_dataloader()))
    sdata = read_shards(shards["sequence"])
    assert s["label"].shape == (5,) and s["label"].dtype == torch.float32
    np.testing.assert_array_equal(s["label"].numpy(), sdata.label[s["row"].numpy()])


def test_empty_test_split_gives_no_loader(shards):
    assert _pre(shards["unlabelled"], test_fraction=0.0).test_dataloader() == []


# --------------------------------------------------------------------------------- resume


@pytest.mark.parametrize("workers", [0, 2])
def test_train_loader_state_round_trip(shards, workers):
    """Stop after 3 batches of epoch 1, restore into a fresh loader: the rest is identical."""
    dm = _pre(shards["unlabelled"], num_workers=workers)
    loader = dm.train_dataloader()
    assert isinstance(loader, _Stateful)
    loader.sampler.set_epoch(1)
    full = [x for x, _ in loader]
    it = iter(loader)
    for _ in range(3):
        next(it)
    state = loader.state_dict()
    it.close()  # stop its workers now
    assert state == {"epoch": 1, "batches": 3}
    fresh = _pre(shards["unlabelled"], num_workers=workers).train_dataloader()
    fresh.load_state_dict(state)
    fresh.sampler.set_epoch(1)  # Lightning calls this before the epoch starts
    rest = [x for x, _ in fresh]
    assert len(rest) == len(full) - 3
    assert all(torch.equal(a, b) for a, b in zip(rest, full[3:], strict=True))
    assert fresh.state_dict() == {"epoch": 1, "batches": len(full)}
    fresh.sampler.set_epoch(2)  # the next epoch is whole again
    assert len([x for x, _ in fresh]) == len(full)


def test_resume_skips_without_reading(shards):
    dm = _fine(shards["sequence"], "sequence")
    loader = dm.train_dataloader()
    reads = []
    original = loader.dataset.rows.read
    loader.dataset.rows.read = lambda *a: reads.append(a) or original(*a)
    loader.load_state_dict({"epoch": 0, "batches": len(loader) - 1})
    batches = list(loader)
    assert len(batches) == 1 and len(reads) == len(batches[0]["row"])


def test_lightning_combined_loader_collects_the_state(shards):
    loader = _fine(shards["sequence"], "sequence").train_dataloader()
    combined = CombinedLoader(loader, "max_size_cycle")
    it = iter(combined)
    next(it)
    next(it)
    assert combined._state_dicts() == [{"epoch": 0, "batches": 2}]
    combined._load_state_dicts([{"epoch": 0, "batches": 1}])
    assert loader.state_dict() == {"epoch": 0, "batches": 1}


def test_lightning_resume_mid_epoch_sees_the_same_remaining_batches(shards, tmp_path):
    """A real Trainer: resume from mid-epoch and epoch-end checkpoints, compare the batches."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    class Recorder(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.seen: list = []

        def training_step(self, batch, batch_idx):
            x, _ = batch
            self.seen.append((self.current_epoch, batch_idx, x[:, :4].tolist()))
            return (self.w * x.float().mean()).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    def fit(ckpt: str | None = None, save: bool = False) -> list:
        model = Recorder()
        trainer = L.Trainer(
            max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False,
            enable_model_summary=False, limit_val_batches=0, use_distributed_sampler=False,
            enable_checkpointing=save,
            callbacks=[ModelCheckpoint(tmp_path, "{step}", every_n_train_steps=1, save_top_k=-1)] if save else [],
        )
        trainer.fit(model, datamodule=_pre(shards["unlabelled"]), ckpt_path=ckpt)
        return model.seen

    full = fit(save=True)
    per_epoch = len(full) // 2
    assert [e for e, _, _ in full] == [0] * per_epoch + [1] * per_epoch
    for step in (3, per_epoch, per_epoch + 2):  # mid-epoch 0, end of epoch 0, mid-epoch 1
        assert fit(str(tmp_path / f"step={step}.ckpt")) == full[step:], step


@pytest.mark.parametrize("name", ["pretrain", "finetune"])
def test_data_configs_instantiate(name, tmp_path):
    """conf/data/*.yaml match the DataModule signatures, given the keys the training tree defines."""
    import hydra
    from heartgpt.conf import CONF_DIR
    from omegaconf import OmegaConf

    root = OmegaConf.create({
        "paths": {"data_dir": str(tmp_path)}, "seed": 7,
        "modality": {"name": "ppg", "sample_rate": 50.0, "vocab_size": 102}, "model": {"block_size": 500},
        "data": OmegaConf.load(CONF_DIR / "data" / f"{name}.yaml"),
    })
    dm = hydra.utils.instantiate(root.data)
    assert type(dm).__name__ == {"pretrain": "PretrainDataModule", "finetune": "FinetuneDataModule"}[name]
    assert dm.seed == 7 and dm.block_size == 500 and dm.modality == "ppg" and dm.vocab_size == 102
    assert dm.shard_dir == str(tmp_path / "demo" / "ppg" / ("pretrain" if name == "pretrain" else "af"))


def test_a_split_file_states_the_subject_split(shards, tmp_path):
    from heartgpt.errors import InputError

    subjects = sorted(set(read_shards(shards["sequence"]).subject.tolist()))
    assert len(subjects) >= 3
    table = {s: ("test" if i == 0 else "val" if i == 1 else "train") for i, s in enumerate(subjects)}
    path = tmp_path / "split.csv"
    path.write_text("subject,split\n" + "".join(f"{s},{v}\n" for s, v in table.items()))
    dm = _fine(shards["sequence"], "sequence", split_file=str(path))
    assert dm.split.test == (subjects[0],) and dm.split.val == (subjects[1],)
    assert dm.split.train == tuple(subjects[2:])
    path.write_text("subject,split\n" + "".join(f"{s},train\n" for s in subjects[1:]))
    with pytest.raises(InputError, match=rf"split.csv: does not match the shard set's subjects "
                                         rf"\(not in the file: \['{subjects[0]}'\]"):
        _ = _fine(shards["sequence"], "sequence", split_file=str(path)).split
    path.write_text(f"subject,split\n{subjects[0]},holdout\n")
    with pytest.raises(InputError, match=r"line 2: split 'holdout' is not train, val or test"):
        _ = _fine(shards["sequence"], "sequence", split_file=str(path)).split


def test_training_windows_with_replacement(shards):
    rows = np.arange(200)
    plain = WindowSampler(rows, 64, 17, seed=1, shuffle=True, offsets="random")
    drawn = WindowSampler(rows, 64, 17, seed=1, shuffle=True, offsets="random", replacement=True)
    assert sorted(plain.keys(0)[0].tolist()) == rows.tolist()  # every row once
    once = drawn.keys(0)[0]
    assert len(once) == len(rows) and len(set(once.tolist())) < len(rows)  # some twice, some never
    assert np.array_equal(once, drawn.keys(0)[0]) and not np.array_equal(once, drawn.keys(1)[0])
    dm = _pre(shards["unlabelled"], with_replacement=True)
    dm.setup("fit")
    assert dm.train_dataloader().sampler.replacement and not dm.val_dataloader().sampler.replacement
