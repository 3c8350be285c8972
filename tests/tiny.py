"""Tiny randomly initialised models for tests of the tools (fast on one thread)."""

from __future__ import annotations

import torch

from heartgpt.model import GPT, GPTConfig

TINY = dict(block_size=64, n_embd=32, n_head=4, n_layer=2, dropout=0.0)


def tiny_gpt(vocab_size: int = 102, **overrides) -> GPT:
    """A 2-layer, 32-dim GPT (context 64) in eval mode, the same weights on every call."""
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=vocab_size, **{**TINY, **overrides})).eval()
