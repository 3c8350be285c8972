"""Data layer: recordings -> HDF5 shards (``prepare``) -> Lightning DataModules.

Names are imported lazily so that ``python -m heartgpt.prepare`` (and its worker processes)
do not import torch and Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    # shards
    "FORMAT_VERSION": "shards",
    "MANIFEST_NAME": "shards",
    "Manifest": "shards",
    "ShardData": "shards",
    "ShardError": "shards",
    "ShardInfo": "shards",
    "ShardMeta": "shards",
    "ShardWriter": "shard_writer",
    "open_shard": "shards",
    "read_manifest": "shards",
    "read_shards": "shards",
    "validate_shard_dir": "shards",
    "validate_shard_file": "shards",
    # splits
    "SubjectSplit": "splits",
    "num_folds": "splits",
    "split_subjects": "splits",
    # samplers, datamodules
    "EvalSampler": "samplers",
    "FinetuneDataModule": "datamodules",
    "PretrainDataModule": "datamodules",
    "ResumableDataLoader": "samplers",
    "WindowSampler": "samplers",
    # demo
    "build_demo": "demo",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
    return getattr(module, name)


def __dir__() -> list[str]:
    return __all__
