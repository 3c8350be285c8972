"""MATLAB .mat files: v4-v7 through ``scipy.io.loadmat``, v7.3 (HDF5, MATLAB's format for large
variables and ``save -v7.3``) through ``h5py``.

Both give the same mapping of variable name -> NumPy array, in MATLAB's own orientation (an
``n x 1`` column is ``(n, 1)``, ``channels x samples`` stays so): MATLAB writes an HDF5 dataset
with its dimensions reversed (column-major), so v7.3 arrays are transposed back. ``char``
variables become strings, cell arrays of ``char`` lists of strings (``channel_names``); struct
and other non-array variables are left out.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from heartgpt.data.compressed import compression_of, read_bytes
from heartgpt.data.recording import RecordError

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_SKIP = ("#refs#", "#subsystem#")


def load_mat(path: Path) -> dict[str, object]:
    """The variables of a .mat file of any version (``.mat.gz`` too).

    Raises:
        RecordError: a v7.3 file that is not valid HDF5.
    """
    source: Path | io.BytesIO = io.BytesIO(read_bytes(path)) if compression_of(path) else path
    if _is_hdf5(source):
        return _load_v73(path, source)
    import scipy.io

    return scipy.io.loadmat(source, squeeze_me=False)


def _is_hdf5(source: Path | io.BytesIO) -> bool:
    """HDF5 signature at offset 0 or 512 (MATLAB's user block holds its text header)."""
    if isinstance(source, io.BytesIO):
        data = source.getvalue()
        return any(data[o : o + 8] == HDF5_SIGNATURE for o in (0, 512))
    with open(source, "rb") as f:
        first = f.read(520)
    return any(first[o : o + 8] == HDF5_SIGNATURE for o in (0, 512))


def _load_v73(path: Path, source: Path | io.BytesIO) -> dict[str, object]:
    import h5py

    out: dict[str, object] = {}
    try:
        with h5py.File(source, "r") as f:
            for key, obj in f.items():
                if key in _SKIP or not isinstance(obj, h5py.Dataset):
                    continue  # structs are groups; MATLAB's own bookkeeping
                value = _dataset(f, obj)
                if value is not None:
                    out[key] = value
    except OSError as e:
        raise RecordError(path, f"cannot read as a MATLAB v7.3 (HDF5) file ({e})") from None
    return out


def _dataset(f, obj) -> object | None:
    """One v7.3 variable in MATLAB's orientation, a string (char) or a list of strings (cell)."""
    import h5py

    cls = obj.attrs.get("MATLAB_class", b"")
    cls = cls.decode() if isinstance(cls, bytes) else str(cls)
    if obj.attrs.get("MATLAB_empty", 0):
        return np.zeros((0, 0))
    data = obj[()]
    if cls == "char":
        return "".join(chr(c) for c in np.asarray(data).T.reshape(-1))
    if cls == "cell" or (isinstance(data, np.ndarray) and data.dtype == h5py.ref_dtype):
        items = []
        for ref in np.asarray(data).T.reshape(-1):
            item = _dataset(f, f[ref])
            items.append(item if isinstance(item, str) else np.asarray(item).squeeze())
        return items
    if cls == "logical":
        data = np.asarray(data).astype(bool)
    arr = np.asarray(data)
    if arr.dtype.names:  # complex numbers are (real, imag) compounds
        return None if set(arr.dtype.names) != {"real", "imag"} else \
            (arr["real"] + 1j * arr["imag"]).T
    return arr.T
