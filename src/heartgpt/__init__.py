"""heartgpt: GPT-style foundation models of heart time-series (ECG and PPG).

The public API, imported lazily (``import heartgpt`` does not import torch)::

    import heartgpt
    loaded = heartgpt.load_model("ECGPT_560k_iters.zip")    # released, .safetensors, .ckpt, .onnx
    tokens = heartgpt.tokenize(window)                        # a window of samples -> 0..100
    logits = loaded.model(torch.as_tensor(tokens)[None])      # (1, T, vocab)
    result = heartgpt.apply(loaded, signal, 50)               # predict's tables for one signal

The package follows the data's path: :mod:`heartgpt.data` (recordings -> shards ->
DataModules), :mod:`heartgpt.model` (the network and its checkpoints), :mod:`heartgpt.training`
(LightningModules, callbacks), :mod:`heartgpt.inference` (generation, AF screening, beat
detection, interpretability) and :mod:`heartgpt.app`; the commands (``python -m heartgpt.train``,
``prepare``, ``eval``, ``export``, ``cv``, ``compare``, ``generate``, ``screen_af``,
``detect_beats``, ``interpret``) are the modules at the top.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.3.0"

_EXPORTS = {
    "GPT": ("heartgpt.model.gpt", "GPT"),
    "GPTConfig": ("heartgpt.model.gpt", "GPTConfig"),
    "KVCache": ("heartgpt.model.gpt", "KVCache"),
    "LoadedModel": ("heartgpt.model.checkpoint_format", "LoadedModel"),
    "load_model": ("heartgpt.model.checkpoints", "load_model"),
    "save_safetensors": ("heartgpt.model.safetensors_file", "save_safetensors"),
    "Modality": ("heartgpt.data.tokenizer", "Modality"),
    "get_modality": ("heartgpt.data.tokenizer", "get_modality"),
    "tokenize": ("heartgpt.data.tokenizer", "tokenize_window"),
    "tokenize_context": ("heartgpt.data.tokenizer", "tokenize_context"),
    "read_signal": ("heartgpt.data.readers", "read_signal"),
    "generate_tokens": ("heartgpt.inference.generation", "generate_tokens"),
    "apply": ("heartgpt.inference.apply", "apply"),
    "Applied": ("heartgpt.inference.apply", "Applied"),
    "InputError": ("heartgpt.errors", "InputError"),
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attr = _EXPORTS[name]
    return getattr(importlib.import_module(module), attr)


def __dir__() -> list[str]:
    return __all__
