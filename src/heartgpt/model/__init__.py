"""The network: HeartGPT's transformer, its attention kernels and its checkpoints.

Plain PyTorch (no Lightning): :class:`GPT` and :class:`GPTConfig` in :mod:`.gpt`, the attention
kernels in :mod:`.attention`, loading the released checkpoints and ours in :mod:`.checkpoints`,
deployment exports (ONNX, ``torch.export``) in :mod:`.export`.
"""

from heartgpt.model.gpt import GPT, GPTConfig, GPTTrace, KVCache, default_stride

__all__ = ["GPT", "GPTConfig", "GPTTrace", "KVCache", "default_stride"]
