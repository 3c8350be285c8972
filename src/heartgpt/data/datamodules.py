"""Lightning DataModules over HDF5 shards: windows for pre-training and fine-tuning.

Design (see ``data/README.md``):

- Splits are by subject (:mod:`heartgpt.data.splits`); ``fold`` picks the k-fold/LOSO fold.
  A split is a set of the row index's runs (:mod:`heartgpt.data.row_index`), never a per-row
  array: setup time and memory grow with shards and subjects, not rows.
- All randomness lives in the samplers (:mod:`heartgpt.data.samplers`), in the main process:
  they yield ``(row, offset)`` keys, fresh each epoch and computed from ``(seed, epoch)`` on
  demand (:mod:`heartgpt.data.epoch_order`). The datasets (:mod:`heartgpt.data.windows`) only
  read what a key names, so batches are identical for any ``num_workers``.
- Each rank takes its own slice of every epoch (the DataModule handles DDP itself; run the
  Trainer with ``use_distributed_sampler=False``). Train drops the last ``< world_size`` keys so
  every rank has as many batches; val pads by repeating keys (``row`` lets you de-duplicate).
  The test loader (evaluation: ``split`` says which rows; ``python -m heartgpt.eval`` scores
  ``all``) uses an :class:`~heartgpt.data.samplers.EvalSampler`: every window once over all
  ranks, in the batches one process would make, so the metrics do not depend on the number of
  devices.
- Setup checks each shard's size; h5py files are opened lazily in the process that reads them
  (reopened after a fork; schema checked at first open; at most 64 open) and rows are read on
  demand, so memory does not grow with the data set.
- The train loader is :class:`~heartgpt.data.samplers.ResumableDataLoader`: Lightning (>= 2.3)
  saves its ``state_dict()`` in checkpoints and restores it with ``load_state_dict()``, after
  which the next iteration skips the batches already consumed without reading them.
- A DataModule's constructor arguments (the keys of ``conf/data/*.yaml``) become one frozen
  settings record (:mod:`heartgpt.data.settings`), read as ``dm.settings.seed`` or ``dm.seed``;
  Lightning keeps them as the DataModule's hyper-parameters (in every checkpoint).
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from heartgpt.batching import plan_batches
from heartgpt.data.epoch_order import RowRanges
from heartgpt.data.labels import LabelSchema
from heartgpt.data.row_index import RowIndex
from heartgpt.data.samplers import EvalSampler, ResumableDataLoader, WindowSampler
from heartgpt.data.settings import DataSettings, FinetuneSettings, PretrainSettings
from heartgpt.data.shards import (
    LABEL_KINDS,
    Manifest,
    ShardError,
    read_column,
    validate_shard_dir,
)
from heartgpt.data.splits import SPLIT_NAMES, SubjectSplit, read_split_file, split_codes
from heartgpt.data.windows import FinetuneWindows, PretrainWindows, ShardRows

# --------------------------------------------------------------------------------- shared setup


def _rows_between(ranges: RowRanges, lo: int, hi: int) -> np.ndarray:
    """The rows of ``ranges`` in ``lo .. hi - 1``, sorted."""
    starts = np.maximum(ranges.starts, lo)
    stops = np.minimum(ranges.starts + ranges.lengths, hi)
    keep = stops > starts
    if not keep.any():
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([np.arange(a, b) for a, b in zip(starts[keep], stops[keep], strict=True)])


def _open_manifest(settings: DataSettings, label_kinds: tuple[str, ...], min_length: int,
                   need: str) -> Manifest:
    # Sizes only here: each reader checks a shard's schema when it first opens it.
    shard_dir, vocab_size = settings.shard_dir, settings.vocab_size
    manifest = validate_shard_dir(shard_dir, modality=settings.modality, label_kind=label_kinds,
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



def _loader_kwargs(settings: DataSettings, batch_size: int) -> dict[str, Any]:
    s = settings
    pin = torch.cuda.is_available() if s.pin_memory is None else bool(s.pin_memory)
    kw: dict[str, Any] = {"batch_size": batch_size, "num_workers": s.num_workers, "pin_memory": pin}
    if s.num_workers > 0:
        kw["persistent_workers"] = bool(s.persistent_workers)
        if s.prefetch_factor is not None:
            kw["prefetch_factor"] = s.prefetch_factor
    return kw


def _split_codes(index: RowIndex, settings: DataSettings, stratify: bool) -> np.ndarray:
    """TRAIN/VAL/TEST (int8) for each subject of ``index``, in its subject-table order."""
    s = settings
    if s.split_file:
        stated = read_split_file(s.split_file, index.names())
        codes = np.zeros(index.num_subjects, dtype=np.int8)
        for code, name in enumerate(SPLIT_NAMES):
            wanted = np.char.encode(np.asarray(stated.of(name), dtype=str), "utf-8")
            codes[np.searchsorted(index.subject_names, wanted)] = code
        return codes
    classes = index.subject_classes() if stratify else None
    return split_codes(index.num_subjects, seed=s.seed, val_fraction=s.val_fraction,
                       test_fraction=s.test_fraction, folds=s.folds, fold=s.fold, classes=classes)


# --------------------------------------------------------------------------------- the base


class ShardDataModule(L.LightningDataModule):
    """What both DataModules do: open a shard set, split it by subject, load windows per split.

    Subclasses say how long a window is (:attr:`window`), which shard sets they accept and what
    a window holds (:meth:`_open`), and where validation windows sit (:meth:`_sampler_options`).
    Their settings (:class:`~heartgpt.data.settings.DataSettings`) are :attr:`settings`, and
    each can be read as an attribute too (``dm.seed``; ``dm.split`` is the subject split, the
    test loader's rows are ``dm.settings.split``).
    """

    settings_type: ClassVar[type[DataSettings]] = DataSettings
    settings: DataSettings

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.__signature__ = inspect.signature(cls.settings_type)  # help() and IDEs: the settings

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """The arguments are :attr:`settings_type`'s (``shard_dir`` and ``modality`` may be
        positional); Lightning keeps them, as given, as the hyper-parameters."""
        super().__init__()
        try:
            self.settings = self.settings_type(*args, **kwargs)
            given = inspect.signature(self.settings_type).bind(*args, **kwargs)
        except TypeError as e:  # named as the DataModule a user (or Hydra) called
            raise TypeError(str(e).replace(self.settings_type.__name__, type(self).__name__)
                            ) from None
        given.apply_defaults()
        self.save_hyperparameters(dict(given.arguments), logger=False)
        self._manifest: Manifest | None = None
        self._split_of_subject: np.ndarray | None = None  # TRAIN/VAL/TEST per subject
        self._ranges: dict[str, RowRanges] = {}
        self._dataset: Dataset | None = None

    def __getattr__(self, name: str) -> Any:
        # Only reached when ordinary lookup fails: a setting read as an attribute.
        settings = self.__dict__.get("settings")
        if settings is not None and name in settings.names():
            return getattr(settings, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def batch_size(self) -> int:
        """Windows per batch of this process: the micro batch of the global batch at this
        world size (raises :class:`~heartgpt.errors.ConfigError` when they do not divide)."""
        return plan_batches(self.settings.global_batch_size, self.settings.micro_batch_size,
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
        if self.settings.verify_checksums:
            validate_shard_dir(self.settings.shard_dir, modality=self.settings.modality,
                               verify_checksums=True)

    def setup(self, stage: str | None = None) -> None:
        if self._manifest is not None:
            return
        manifest, stratify = self._open()
        index = manifest.row_index
        try:
            codes = _split_codes(index, self.settings, stratify=stratify)
            self._ranges = {s: index.rows_of(codes == c) for c, s in enumerate(SPLIT_NAMES)}
            self._split_of_subject = codes
        except ValueError:
            if self.settings.split != "all":
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
            raise ValueError(f"{self.settings.shard_dir}: its subjects cannot be split with "
                             "these settings (split=all, which scores every row, needs no split)")
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
        length, seed = self.manifest.meta.segment_length, self.settings.seed
        sampler: WindowSampler
        if evaluate:
            sampler = EvalSampler(rows, length, self.window, seed=seed,
                                  batch_size=self.batch_size, rank=rank, world_size=world,
                                  **self._sampler_options(False))
        else:
            sampler = WindowSampler(rows, length, self.window, seed=seed, shuffle=train,
                                    rank=rank, world_size=world,
                                    replacement=train and self.settings.with_replacement,
                                    **self._sampler_options(train))
        assert self._dataset is not None
        cls = ResumableDataLoader if train else DataLoader
        return cls(self._dataset, sampler=sampler,
                   **_loader_kwargs(self.settings, self.batch_size))

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")  # type: ignore[return-value]

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader | list:
        """The windows of ``split`` (default 'test'), each once over all ranks."""
        return self._loader(self.settings.split, evaluate=True)




# --------------------------------------------------------------------------------- pre-training


class PretrainDataModule(ShardDataModule):
    """Random windows of ``block_size + 1`` tokens; batches are ``(x, y)`` int64 (B, block_size).

    Any shard set serves (labels are ignored); segments must hold ``block_size + 1`` tokens.
    Args: :class:`~heartgpt.data.settings.PretrainSettings` (``windows_per_segment``: windows
    drawn from each training segment per epoch).
    """

    settings_type = PretrainSettings
    settings: PretrainSettings

    @property
    def window(self) -> int:
        return self.settings.block_size + 1

    def _open(self) -> tuple[Manifest, bool]:
        return _open_manifest(self.settings, LABEL_KINDS, self.window, "block_size + 1"), False

    def _make_dataset(self, manifest: Manifest) -> Dataset:
        return PretrainWindows(ShardRows(manifest), self.settings.block_size)

    def _sampler_options(self, train: bool) -> dict[str, Any]:
        return {"offsets": "random" if train else "fixed",
                "repeats": self.settings.windows_per_segment if train else 1}


# --------------------------------------------------------------------------------- fine-tuning


class FinetuneDataModule(ShardDataModule):
    """Windows of ``block_size`` tokens with their ``label`` (sequence) or ``targets`` (token).

    Batches are dicts: ``tokens`` int64 (B, T), ``label`` float32 (B,) or ``targets`` float32
    (B, T), ``subject`` list[str], ``row`` int64 (B,) (global row, to pool per subject). When
    segments are longer than ``block_size``, train takes a random window, val/test the last.
    Args: :class:`~heartgpt.data.settings.FinetuneSettings` (``label_kind``: 'sequence', needs
    shards with ``label``, or 'token', ``targets``; ``stratify``: stratify the subject split by
    each subject's majority label, for sequence labels).
    """

    settings_type = FinetuneSettings
    settings: FinetuneSettings

    @property
    def window(self) -> int:
        return self.settings.block_size

    def _open(self) -> tuple[Manifest, bool]:
        s = self.settings
        manifest = _open_manifest(s, (s.label_kind,), self.window, "block_size")
        schema = manifest.meta.label_schema
        assert schema is not None  # a labelled label_kind
        if schema.stride > 1 and manifest.meta.segment_length != s.block_size:
            raise ShardError(
                f"{s.shard_dir}: targets every {schema.stride} tokens need segments of exactly "
                f"block_size={s.block_size} tokens (they hold {manifest.meta.segment_length}); "
                f"re-run prepare with segment.samples={s.block_size}")
        return manifest, s.stratify and schema.kind == "class"

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
        sequence = self.settings.label_kind == "sequence"
        name = "label" if sequence else "targets"
        width = self.label_schema.width if sequence else 1
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
            raise ShardError(f"{self.settings.shard_dir}: the {split} split has no {name} values to "
                             "standardise a regression head by")
        mean = total / count
        return mean, np.sqrt(np.maximum(squares / count - mean**2, 0.0))

    def _make_dataset(self, manifest: Manifest) -> Dataset:
        return FinetuneWindows(ShardRows(manifest), self.settings.block_size,
                               self.settings.label_kind,
                               manifest.row_index, manifest.meta.label_schema)

    def _sampler_options(self, train: bool) -> dict[str, Any]:
        return {"offsets": "random" if train else "last"}
