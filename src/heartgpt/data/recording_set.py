"""Recordings on disk as a Lightning predict set: one item per recording, read in the loader.

:class:`RecordingDataModule` lists the recordings of a folder, glob, file or list (any format
:func:`~heartgpt.data.discovery.list_inputs` finds), leaves out those ``skip`` says are done,
and gives each process its share (``[rank::world_size]``, nothing repeated or padded). Rank 0
lists and broadcasts, so every process splits the same list even when files appear meanwhile.
A recording that cannot be read is an item with its error, not an exception: predicting
reports it in the table and goes on.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from heartgpt.data.discovery import list_inputs
from heartgpt.data.readers import read_recording
from heartgpt.data.recording import RecordFile, Recording
from heartgpt.errors import InputError, error_line

log = logging.getLogger(__name__)


@dataclass
class RecordingItem:
    """One recording to predict: the file, and either its contents or why they are missing."""

    file: RecordFile
    recording: Recording | None
    error: str | None = None


class RecordingSet(Dataset):
    """Reads recording ``i`` of ``files`` (one channel, at its own or the given rate)."""

    def __init__(self, files: Sequence[RecordFile], channel: int | str,
                 sample_rate: float | None, csv_decimal: str = ".") -> None:
        self.files, self.channel, self.sample_rate = list(files), channel, sample_rate
        self.csv_decimal = csv_decimal

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> RecordingItem:
        rf = self.files[i]
        try:
            rec = read_recording(rf, self.channel, self.sample_rate, csv_decimal=self.csv_decimal)
        except (InputError, OSError, ValueError, KeyError) as e:  # any reader's complaint
            return RecordingItem(rf, None, error_line(e).removeprefix(f"{rf.path}: "))
        return RecordingItem(rf, rec)


def only_item(batch: list[RecordingItem]) -> RecordingItem:
    """Collate of batch size 1 (picklable, for worker processes)."""
    return batch[0]


class RecordingDataModule(L.LightningDataModule):
    """The recordings still to predict, split across processes.

    Args:
        inputs: a folder (searched recursively), a glob, a file, or a list of them.
        format: ``auto`` (by extension) or one of csv, npy, mat, wfdb, edf.
        channel: column index or name of the channel to read.
        sample_rate: Hz of files that do not carry their rate (CSV, plain .npy); files that
            do use their own. ``None``: such files are reported as failed.
        csv_decimal: the decimal mark of CSV/text files (``.`` or ``,``).
        skip: called on rank 0 with every recording found; returns the names already done.
        num_workers: DataLoader workers reading recordings.
        exclude_dirs: folders whose files are never inputs (the results of this and other
            runs, when they lie inside an input folder).
    """

    def __init__(self, inputs: str | Sequence[str], format: str = "auto",
                 channel: int | str = 0, sample_rate: float | None = None,
                 csv_decimal: str = ".", skip: Callable[[list[RecordFile]], set[str]] | None = None,
                 num_workers: int = 0, exclude_dirs: Sequence[str | os.PathLike] = ()) -> None:
        super().__init__()
        self.inputs = [str(p) for p in inputs] if not isinstance(inputs, (str, os.PathLike)) \
            else str(inputs)
        self.format, self.channel, self.sample_rate = format, channel, sample_rate
        self.csv_decimal = csv_decimal
        self.skip, self.num_workers = skip, num_workers
        self.exclude_dirs = [Path(d).resolve() for d in exclude_dirs]
        self.records: list[RecordFile] = []  # every recording found (rank 0)
        self.todo: list[RecordFile] = []  # not done yet, all processes
        self.done: set[str] = set()

    def list_records(self) -> list[RecordFile]:
        """Every recording of the inputs, sorted by name.

        Raises:
            InputError: an input that does not exist, or no recording found.
        """
        try:
            listing = list_inputs(self.inputs, self.format, exclude_dirs=self.exclude_dirs)
        except FileNotFoundError as e:
            raise InputError(str(self.inputs), str(e).split(": ", 1)[-1]) from None
        if not listing.readable:
            unread = "; ".join(f"{r.name}: {r.problem}" for r in listing.unread[:3])
            raise InputError(str(self.inputs), "no recordings found (.csv/.txt, .npy/.npz, "
                             ".mat, .edf/.bdf, WFDB .hea, or any of them .gz"
                             f"{'' if self.format == 'auto' else ', format=' + self.format})"
                             f"{'; ' + unread if unread else ''}")
        note = listing.note()
        if note:
            log.info("%s", note)
        return listing.records  # the files of no supported format too: a row each, failed

    def setup(self, stage: str) -> None:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        listing: tuple[list[RecordFile], set[str]] | None = None
        if rank == 0:
            self.records = self.list_records()
            done = self.skip(self.records) if self.skip else set()
            listing = ([r for r in self.records if r.name not in done], done)
        if trainer is not None and world > 1:
            listing = trainer.strategy.broadcast(listing, src=0)
        todo, self.done = listing
        self.todo = todo[rank::world]

    def transfer_batch_to_device(self, batch: RecordingItem, device: torch.device,
                                 dataloader_idx: int) -> RecordingItem:
        return batch  # NumPy signals: each mode moves its token batches to the model's device

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(RecordingSet(self.todo, self.channel, self.sample_rate, self.csv_decimal), batch_size=1,
                          shuffle=False, collate_fn=only_item, num_workers=self.num_workers)
