"""What a shard DataModule is configured with: one frozen settings record per DataModule.

:class:`DataSettings` holds what both DataModules take (the keys of ``conf/data/*.yaml``),
:class:`PretrainSettings` and :class:`FinetuneSettings` add their own. A DataModule's
constructor takes exactly its settings' arguments (what Hydra passes from the yaml) and builds
them once; the settings check and normalise them.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass, fields

from heartgpt.data.shards import LABEL_KINDS
from heartgpt.data.splits import SPLIT_NAMES
from heartgpt.data.tokenizer import get_modality

EVAL_SPLITS = ("all", *SPLIT_NAMES)  # the rows the test (evaluation) loader may serve
FINETUNE_LABEL_KINDS = tuple(k for k in LABEL_KINDS if k != "unlabelled")  # sequence, token


@dataclass(frozen=True)
class DataSettings:
    """The settings of every shard DataModule.

    Args:
        shard_dir: a shard directory written by ``python -m heartgpt.prepare``.
        modality: 'ecg' | 'ppg' (any case; kept as the modality's name); the shards must match.
        block_size: model context.
        global_batch_size: windows per optimiser step over all processes (the recipe's batch).
        micro_batch_size: windows per batch of one process (None: the process's whole share of
            the global batch); the DataModule's ``batch_size`` follows from the world size
            (:func:`heartgpt.batching.plan_batches`).
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

    shard_dir: str
    modality: str
    _: KW_ONLY
    block_size: int
    global_batch_size: int
    seed: int
    val_fraction: float
    test_fraction: float
    micro_batch_size: int | None = None
    folds: int | str | None = None
    fold: int = 0
    vocab_size: int | None = None
    num_workers: int = 0
    pin_memory: bool | None = None
    persistent_workers: bool = False
    prefetch_factor: int | None = None
    verify_checksums: bool = True
    split: str = "test"
    split_file: str | None = None
    with_replacement: bool = False

    def __post_init__(self) -> None:
        if self.split not in EVAL_SPLITS:
            raise ValueError(f"split must be one of {EVAL_SPLITS}, got {self.split!r}")
        object.__setattr__(self, "shard_dir", str(self.shard_dir))
        object.__setattr__(self, "modality", get_modality(self.modality).name)
        object.__setattr__(self, "split_file", str(self.split_file) if self.split_file else None)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The settings' names."""
        return tuple(f.name for f in fields(cls))


@dataclass(frozen=True, kw_only=True)
class PretrainSettings(DataSettings):
    """:class:`DataSettings` plus ``windows_per_segment``: windows drawn from each training
    segment per epoch."""

    windows_per_segment: int = 1


@dataclass(frozen=True, kw_only=True)
class FinetuneSettings(DataSettings):
    """:class:`DataSettings` plus ``label_kind`` ('sequence': shards with ``label``, or 'token':
    ``targets``) and ``stratify`` (stratify the subject split by each subject's majority label,
    for sequence labels)."""

    label_kind: str
    stratify: bool = True

    def __post_init__(self) -> None:
        if self.label_kind not in FINETUNE_LABEL_KINDS:
            raise ValueError(f"label_kind must be 'sequence' or 'token', got {self.label_kind!r}")
        super().__post_init__()
