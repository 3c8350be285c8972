"""How training writes and reads its Lightning ``.ckpt`` files (``trainer.plugins`` in
``conf/trainer/default.yaml``).

:class:`SafeCheckpointIO` is Lightning's ``TorchCheckpointIO`` with two changes:

* **Writes are atomic on the checkpoint's own filesystem.** Lightning's ``_atomic_save``
  serialises to memory and then writes through fsspec, which for a local path opens the target
  itself: a kill during the write leaves a truncated (even 0-byte) ``last.ckpt``. Here a local
  checkpoint is written to a temporary file beside the target, fsynced and renamed over it
  (:func:`heartgpt.files.atomic_path`): a reader sees the old file or the new one. Remote paths
  (``s3://`` ...) keep Lightning's behaviour.
* **Reads never run code.** ``ckpt_path=`` is read by
  :func:`heartgpt.model.checkpoint_format.load_weights_only` (``weights_only=True`` whatever the
  caller asks; refused while ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` is set), so a crafted pickle
  cannot execute. An empty, truncated or foreign file is a
  :class:`~heartgpt.model.checkpoint_format.CheckpointError` naming it, without PyTorch's advice to
  retry with ``weights_only=False``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from heartgpt.files import atomic_path
from heartgpt.model.checkpoint_format import CheckpointError, load_weights_only


def _is_local(path: str | os.PathLike) -> bool:
    return "://" not in str(path) or str(path).startswith("file://")


class SafeCheckpointIO(TorchCheckpointIO):
    """Atomic local saves and ``weights_only`` loads (module docstring)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        with atomic_path(str(path).removeprefix("file://")) as tmp:
            torch.save(checkpoint, tmp)
        return None

    def load_checkpoint(self, path: str | os.PathLike,
                        map_location: Callable | None = lambda storage, loc: storage,
                        weights_only: bool | None = None) -> dict[str, Any]:
        if not _is_local(path):
            return super().load_checkpoint(path, map_location, weights_only=True)
        local = Path(str(path).removeprefix("file://"))
        if not local.is_file():
            raise CheckpointError(local, "no such checkpoint file")
        return load_weights_only(local, local, "a Lightning checkpoint")
