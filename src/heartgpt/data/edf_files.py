"""EDF, EDF+, BDF and BDF+ recordings (sleep studies, Holter exports, wearables), read with
``edfio`` (a maintained pure-Python reader of the EDF family, NumPy only).

One signal is read: chosen by label (``channel=Pleth``) or index among the ordinary signals
(the ``EDF Annotations`` / ``BDF Annotations`` signals are not counted and annotations are
ignored), in physical units, at that signal's own sampling rate (signals of one file may have
different rates). Whether the file is EDF (16-bit) or BDF (24-bit) is read from its first
bytes, not its name. An EDF+D file (discontinuous) whose data records leave gaps is refused
with that reason: its samples do not form one time series.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from heartgpt.data.channels import pick_channel
from heartgpt.data.compressed import compression_of, read_bytes
from heartgpt.data.recording import RecordError

EDF_MAGIC = b"0       "  # the version field of an EDF/EDF+ header
BDF_MAGIC = b"\xffBIOSEMI"  # ... and of a BDF/BDF+ header


def read_edf(path: Path, channel: int | str | None) -> tuple[np.ndarray, dict]:
    """One signal of an EDF/BDF file: (samples in physical units, {fs, units}); ``channel``
    None: the file's only signal.

    Raises:
        RecordError: an empty file or one that is not EDF/BDF, no ordinary signal, a channel
            that is not there, a discontinuous recording with gaps.
    """
    import edfio

    source: Path | io.BytesIO = path
    if compression_of(path):
        source = io.BytesIO(read_bytes(path))
        head = source.getvalue()[:8]
    else:
        with open(path, "rb") as f:
            head = f.read(8)
    if not head:
        raise RecordError(path, "empty file (0 bytes): not an EDF/BDF recording")
    if head == BDF_MAGIC:
        edf = edfio.read_bdf(source, header_encoding="latin-1")
    elif head == EDF_MAGIC:
        edf = edfio.read_edf(source, header_encoding="latin-1")  # any byte
    else:
        raise RecordError(path, f"not an EDF/BDF file (its header starts {head!r}, expected "
                                f"{EDF_MAGIC!r} or {BDF_MAGIC!r})")
    signals = list(edf.signals)  # edfio leaves the annotation signals out
    if not signals:
        raise RecordError(path, "no signals (only annotations)")
    if not edf.is_continuous:
        raise RecordError(path, "EDF+D/BDF+D recording with gaps between its data records: "
                                "its samples are not one time series; export each continuous "
                                "part as its own file (e.g. EDFbrowser, or edfio's "
                                "slice_between_seconds)")
    labels = [s.label for s in signals]
    if channel is None and len(signals) > 1:
        raise RecordError(path, f"{len(signals)} signals ({', '.join(labels)}): choose one by "
                                "label or index (channel=..., the tools: --channel)")
    j = 0 if channel is None else pick_channel(labels, channel, len(signals), path)
    signal = signals[j]
    data = np.asarray(signal.data, dtype=np.float64)
    if data.size == 0:
        raise RecordError(path, f"signal {signal.label!r} has no samples")
    return data, {"fs": float(signal.sampling_frequency),
                  "units": signal.physical_dimension.strip()}
