"""The network: HeartGPT's transformer, its attention kernels and its checkpoints.

Plain PyTorch (no Lightning): :class:`GPT` and :class:`GPTConfig` in :mod:`.gpt`, the attention
kernels in :mod:`.attention`, LoRA adapters in :mod:`.lora`. Checkpoint files: what every format
shares in :mod:`.checkpoint_format`, one reader per format (:mod:`.released`,
:mod:`.lightning_checkpoint`, :mod:`.safetensors_file`, :mod:`.onnx_file`) and the loader that
picks among them, :mod:`.checkpoints`; deployment exports (ONNX, ``torch.export``) in
:mod:`.export`.
"""

from heartgpt.model.gpt import GPT, GPTConfig, GPTTrace, KVCache, default_stride

__all__ = ["GPT", "GPTConfig", "GPTTrace", "KVCache", "default_stride"]
