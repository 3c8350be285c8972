"""What reading a recording gives: :class:`Recording` (one channel and what its file says),
:class:`RecordFile` (a recording found on disk, before reading) and :class:`RecordError`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from heartgpt.errors import InputError


@dataclass
class Recording:
    """One channel of one recording, at its own sampling rate."""

    name: str  # record id: path relative to the input root, without extension
    path: Path
    signal: np.ndarray  # (n,) float64
    sample_rate: float | None  # Hz; None when the file does not say
    subject: str | None = None
    label: float | tuple[float, ...] | None = None  # one value, or one per label column
    beats: np.ndarray | None = None  # sample indices at sample_rate, 0-based
    targets: np.ndarray | None = None  # per-chunk targets (sidecar values: one per target stride)


@dataclass(frozen=True)
class RecordFile:
    """A recording found on disk, before reading; or, with a ``problem``, a file that is not
    read (of no supported format), reported with that reason instead of being left out."""

    name: str
    path: Path
    format: str
    problem: str | None = None


class RecordError(InputError):
    """A recording cannot be read (``prepare`` skips it as 'unreadable'; the tools stop)."""
