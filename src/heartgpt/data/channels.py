"""Choosing one channel of a recording: by index (negative from the end) or by name (matched
without surrounding spaces, then case-insensitively); shared by every file format's reader."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from heartgpt.data.recording import RecordError


def pick_channel(names: Sequence[str] | None, channel: int | str, n_channels: int,
                 where: Path) -> int:
    """The index of ``channel`` among ``n_channels`` (named ``names``, if the file names them).

    Raises:
        RecordError: an index out of range or a name no channel has (naming the channels).
    """
    if isinstance(channel, (int, np.integer)) and not isinstance(channel, bool):
        if not -n_channels <= channel < n_channels:
            raise RecordError(where, f"channel {channel} out of range ({n_channels} channels)")
        return int(channel) % n_channels
    text = str(channel).strip()
    if names:
        clean = [str(n).strip() for n in names]
        if text in clean:
            return clean.index(text)
        lower = [n.lower() for n in clean]
        if text.lower() in lower:
            return lower.index(text.lower())
    if text.lstrip("-").isdigit():
        return pick_channel(names, int(text), n_channels, where)
    raise RecordError(where, f"no channel named {text!r} (channels: {list(names or [])})")


def column(data: np.ndarray, names: Sequence[str] | None, channel: int | str,
           where: Path) -> np.ndarray:
    """Channel ``channel`` of a (samples,) or (samples, channels) array, as float64."""
    data = np.asarray(data)
    if data.ndim == 1:
        data = data[:, None]
    if data.ndim != 2:
        raise RecordError(where, f"expected a 1-D or 2-D signal array, got shape {data.shape}")
    j = pick_channel(names, channel, data.shape[1], where)
    col = data[:, j]
    if not np.issubdtype(col.dtype, np.number):
        raise RecordError(where, f"channel {channel!r} is not numeric ({col.dtype})")
    return col.astype(np.float64)
