"""``FixedBatches``: train and validate on the first N training batches of a DataModule.

Lightning's ``Trainer(overfit_batches=N)`` replaces the sampler with a ``SequentialSampler``,
which the heartgpt datasets (indexed by ``(row, offset)`` keys) do not accept; this wrapper
takes the batches once instead and serves the same ones, over and over.
"""

from __future__ import annotations

from itertools import islice
from typing import Any

import lightning as L
from torch.utils.data import DataLoader, Dataset


class _Batches(Dataset):
    def __init__(self, batches: list[Any], repeats: int) -> None:
        self.batches = batches
        self.repeats = repeats

    def __len__(self) -> int:
        return len(self.batches) * self.repeats

    def __getitem__(self, i: int) -> Any:
        return self.batches[i % len(self.batches)]


class FixedBatches(L.LightningDataModule):
    """Serve ``num_batches`` fixed batches of ``datamodule``'s training data for train and val.

    A training epoch repeats them ``TRAIN_REPEATS`` times (one-batch epochs would spend most of
    their time in Lightning's per-epoch bookkeeping); validation and test see each once.
    """

    TRAIN_REPEATS = 100

    def __init__(self, datamodule: L.LightningDataModule, num_batches: int) -> None:
        super().__init__()
        if num_batches < 1:
            raise ValueError(f"num_batches must be >= 1, got {num_batches}")
        self.datamodule = datamodule
        self.num_batches = num_batches
        self._batches: list[Any] | None = None

    def prepare_data(self) -> None:
        self.datamodule.prepare_data()

    def setup(self, stage: str) -> None:
        if self._batches is not None:
            return
        self.datamodule.trainer = self.trainer
        self.datamodule.setup("fit")
        self._batches = list(islice(iter(self.datamodule.train_dataloader()), self.num_batches))

    def _loader(self, repeats: int) -> DataLoader:
        assert self._batches is not None
        return DataLoader(_Batches(self._batches, repeats), batch_size=None)  # items: batches

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.TRAIN_REPEATS)

    def val_dataloader(self) -> DataLoader:
        return self._loader(1)

    def test_dataloader(self) -> DataLoader:
        return self._loader(1)
