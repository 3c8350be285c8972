"""The HeartGPT model: a small decoder-only transformer over tokenised ECG/PPG.

Architecture of the released HeartGPT (Davies, Monsen, Mandic 2024): token + learned absolute
position embeddings, pre-LayerNorm blocks of causal multi-head self-attention and a 4x ReLU MLP,
a final LayerNorm and a linear head. Attention uses one fused QKV projection and the kernel
:func:`heartgpt.model.attention.attend` picks; the released models scale scores by ``n_embd ** -0.5``
rather than ``head_size ** -0.5``, which ``GPTConfig.attn_scale`` expresses.

The block arithmetic is written once, in ``Block.forward`` / ``CausalSelfAttention.forward`` /
``MLP.forward``, and one loop over the blocks (``GPT._run``) serves training, ``inspect``
(hidden states and attention weights) and cached decoding (``forward_cached``: a per-layer KV
cache, as in litgpt). Inside the model, submodules are called through ``.forward``, not
``module(x)``: a one-token decoding step is ~100 tiny operations, and ``nn.Module.__call__``
(hook dispatch) and no-op dropouts made it ~30 % slower. Forward hooks on submodules do not fire;
:meth:`GPT.inspect` gives the internals. Dropout modules are skipped outside training, where
they are the identity.

Plain PyTorch: no Lightning here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
from torch.nn import functional as F

from heartgpt.model.attention import attend


@dataclass
class GPTConfig:
    """Shape of a HeartGPT model.

    The defaults are the released HeartGPT size (``conf/model/paper.yaml`` states the same).
    """

    vocab_size: int = 101  # 101 for ECG, 102 for PPG (tokens 0..100)
    block_size: int = 500  # context length in tokens
    n_embd: int = 64
    n_head: int = 8
    n_layer: int = 8
    dropout: float = 0.2  # after attention softmax, after attention proj, after the MLP
    attn_scale: float | None = 0.125  # None: head_size ** -0.5; released models: n_embd ** -0.5
    out_features: int | None = None  # head outputs; None: vocab_size (LM), 1: binary fine-tune

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    @property
    def scale(self) -> float:
        """The factor attention scores are multiplied by."""
        return self.attn_scale if self.attn_scale is not None else self.head_size**-0.5

    @property
    def n_out(self) -> int:
        return self.out_features if self.out_features is not None else self.vocab_size

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> GPTConfig:
        """Build from a mapping, refusing unknown keys (a typo must not pass silently)."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown GPTConfig field(s): {sorted(unknown)}")
        return cls(**dict(d))


@dataclass
class GPTTrace:
    """What :meth:`GPT.inspect` returns: outputs plus the internals for interpretability."""

    logits: torch.Tensor  # (B, T, n_out)
    hidden_states: torch.Tensor  # (n_layer + 1, B, T, C): embeddings, then each block's output
    attentions: torch.Tensor  # (n_layer, B, nh, T, T), post-softmax weights


class KVCache:
    """Keys and values of the tokens a :class:`GPT` has already seen, for incremental decoding.

    Preallocated for ``block_size`` positions; the first ``length`` are filled. Used by
    :meth:`GPT.forward_cached` and :meth:`GPT.generate_cached` (inference only: no dropout).
    """

    def __init__(
        self,
        config: GPTConfig,
        batch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        shape = (config.n_layer, 2, batch_size, config.n_head, config.block_size, config.head_size)
        # keys [:, 0] and values [:, 1] in one tensor: a decoding step writes both with one copy
        self.kv = torch.zeros(shape, device=device, dtype=dtype)  # (L, 2, B, nh, block_size, hs)
        self.length = 0

    @property
    def k(self) -> torch.Tensor:
        return self.kv[:, 0]  # (L, B, nh, block_size, hs)

    @property
    def v(self) -> torch.Tensor:
        return self.kv[:, 1]  # (L, B, nh, block_size, hs)

    @property
    def capacity(self) -> int:
        return self.kv.size(4)

    def reset(self) -> None:
        """Forget every position (the buffers are reused)."""
        self.length = 0


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention; the kernel is :func:`heartgpt.model.attention.attend`'s pick."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.scale = config.scale
        self.dropout = config.dropout
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=False)
        self.proj = nn.Linear(config.n_embd, config.n_embd)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        cache: torch.Tensor | None = None,
        start: int = 0,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attend ``x`` (B, T, C) at positions ``start .. start + T - 1``: ((B, T, C), weights).

        ``cache``: this layer's keys and values (2, B, nh, block_size, hs) holding positions
        ``0 .. start - 1``; this call's keys and values are written at ``start ..`` and the
        queries attend over all of them. Without a cache the tokens are positions ``0 ..``
        (``start`` is unused). The weights (B, nh, T, start + T) are returned with
        ``need_weights``, else ``None``.
        """
        B, T, C = x.shape
        qkv = self.qkv.forward(x).view(B, T, 3, self.n_head, C // self.n_head)  # (B,T,3,nh,hs)
        qkv = qkv.permute(2, 0, 3, 1, 4)  # (3, B, nh, T, hs)
        q, k, v = qkv.unbind(0)  # 3 x (B, nh, T, hs)
        if cache is not None:
            end = start + T
            cache[:, :, :, start:end] = qkv[1:]  # this call's keys and values
            k, v = cache[:, :, :, :end].unbind(0)  # 2 x (B, nh, end, hs)
        y, att = attend(
            q, k, v, scale=self.scale, dropout_p=self.dropout if self.training else 0.0,
            need_weights=need_weights,
        )  # (B, nh, T, hs), (B, nh, T, end) or None
        y = self.proj.forward(y.transpose(1, 2).reshape(B, T, C))  # (B, T, C): heads merged
        return (self.resid_dropout(y) if self.training else y), att


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj.forward(F.relu(self.fc.forward(x)))  # (B, T, 4C) -> (B, T, C)
        return self.dropout(x) if self.training else x


class Block(nn.Module):
    """Pre-LayerNorm transformer block: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(
        self,
        x: torch.Tensor,
        cache: torch.Tensor | None = None,
        start: int = 0,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, T, C) -> ((B, T, C), attention weights or None); arguments as the attention's."""
        a, att = self.attn.forward(self.ln1.forward(x), cache, start, need_weights)
        x = x + a  # (B, T, C)
        return x + self.mlp.forward(self.ln2.forward(x)), att  # (B, T, C)


def default_stride(block_size: int) -> int:
    """:meth:`GPT.generate_cached`'s default re-encode stride: a fifth of the window."""
    return max(1, block_size // 5)


def _sample_next(
    logits: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None
) -> torch.Tensor:
    """One token per row from the last position's logits (B, V): temperature, top-k, multinomial."""
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = F.softmax(logits, dim=-1)  # (B, V)
    return torch.multinomial(probs, num_samples=1, generator=generator)  # (B, 1)


class GPT(nn.Module):
    """HeartGPT: ``forward(idx)`` maps tokens (B, T) to head outputs (B, T, n_out)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.n_embd)
        self.position_embedding = nn.Embedding(config.block_size, config.n_embd)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.head = nn.Linear(config.n_embd, config.n_out)
        self.apply(self._init_weights)
        # GPT-2 style: scale the residual projections by depth.
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def embed(self, idx: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Token + position embeddings (B, T, C) of ``idx`` (B, T) at ``start .. start + T - 1``."""
        B, T = idx.shape
        if self.config.block_size < start + T:
            raise ValueError(
                f"sequence length {start + T} exceeds block_size {self.config.block_size}"
            )
        # rows start..start+T-1 of the position table: a slice, not an arange + lookup
        pos = self.position_embedding.weight[start : start + T]  # (T, C)
        return self.token_embedding.forward(idx) + pos  # (B, T, C)

    def _run(
        self, idx: torch.Tensor, cache: KVCache | None = None, trace: bool = False
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """The one pass through the model, for ``forward``, ``inspect`` and ``forward_cached``.

        Returns the final normalised hidden states (B, T, C) and, with ``trace``, the residual
        stream [embeddings, each block's output] (each (B, T, C)) and each block's attention
        weights (B, nh, T, start + T); without ``trace`` the lists are empty. With a ``cache``
        the tokens follow the cached ones and their keys and values are appended to it.
        """
        start = 0 if cache is None else cache.length
        x = self.embed(idx, start)  # (B, T, C)
        hidden, attn = ([x], []) if trace else ([], [])
        for layer, block in enumerate(self.blocks):
            kv = None if cache is None else cache.kv[layer]  # (2, B, nh, block_size, hs)
            x, att = block.forward(x, kv, start, need_weights=trace)  # (B, T, C), weights or None
            if trace:
                hidden.append(x)
                attn.append(att)
        if cache is not None:
            cache.length = start + idx.size(1)
        return self.ln_f.forward(x), hidden, attn

    def hidden(self, idx: torch.Tensor) -> torch.Tensor:
        """Final normalised hidden states (B, T, C), the input of the head."""
        return self._run(idx)[0]

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head.forward(self.hidden(idx))  # (B, T, n_out)

    def inspect(self, idx: torch.Tensor) -> GPTTrace:
        """Forward pass that also returns every block's input/output and attention weights.

        Uses the explicit attention kernel (T x T weights are materialised), so call it only
        when the internals are wanted; ``forward`` is unaffected.
        """
        x, hidden, attn = self._run(idx, trace=True)
        logits = self.head.forward(x)  # (B, T, n_out)
        return GPTTrace(logits, torch.stack(hidden), torch.stack(attn))

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sample ``max_new_tokens`` tokens after ``idx`` (B, T) as the released HeartGPT does.

        Each step re-runs the model on the last ``block_size`` tokens (positions re-indexed from
        0), samples from the softmax of the last position's logits (scaled by ``temperature``,
        optionally restricted to the ``top_k`` most likely) and appends. Pass a seeded
        ``generator`` for reproducible samples. Returns (B, T + max_new_tokens).
        """
        if self.config.out_features is not None:
            raise ValueError("generate needs a language-model head; this model has a task head")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        for _ in range(max_new_tokens):
            idx_cond = idx[:, -self.config.block_size :]  # (B, <=block_size)
            logits = self(idx_cond)[:, -1, :]  # (B, V)
            idx_next = _sample_next(logits, temperature, top_k, generator)  # (B, 1)
            idx = torch.cat((idx, idx_next), dim=1)  # (B, T + 1)
        return idx

    @torch.no_grad()
    def forward_cached(self, idx: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Head outputs (B, T, n_out) for tokens ``idx`` (B, T) that follow those in ``cache``.

        The new tokens take positions ``cache.length .. cache.length + T - 1``; their keys and
        values are appended to ``cache``. Equal to ``forward`` of all the tokens seen since the
        cache was (re)started, at the new positions; for inference (call it in eval mode).
        """
        start, T = cache.length, idx.size(1)
        if start + T > cache.capacity:
            raise ValueError(f"{start} cached + {T} new tokens exceed block_size {cache.capacity}")
        return self.head.forward(self._run(idx, cache)[0])  # (B, T, n_out)

    @torch.inference_mode()
    def generate_cached(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        stride: int | None = None,
    ) -> torch.Tensor:
        """Like :meth:`generate`, with a KV cache: an approximation once the window is full.

        While the context plus the generated tokens fit in ``block_size``, the logits equal
        :meth:`generate`'s (each new token is one cached step). When the window is full, the
        cache is rebuilt from the last ``block_size - stride`` tokens (re-encoded at positions
        0..) plus the new one, so every token is predicted from between ``block_size - stride``
        and ``block_size - 1`` previous tokens instead of always ``block_size - 1``.
        ``stride=1`` is exact mode (a re-encode every step); larger strides are faster.
        Default ``block_size // 5`` (100 for the released models). Returns (B, T + max_new_tokens),
        made under ``torch.inference_mode`` (an inference tensor: it cannot enter autograd).
        """
        if self.config.out_features is not None:
            raise ValueError("generate needs a language-model head; this model has a task head")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        bs = self.config.block_size
        stride = default_stride(bs) if stride is None else stride
        if not 1 <= stride <= bs:
            raise ValueError(f"stride must be in 1..{bs}, got {stride}")
        if max_new_tokens <= 0:
            return idx
        B, T0 = idx.shape
        out = torch.empty(B, T0 + max_new_tokens, dtype=idx.dtype, device=idx.device)
        out[:, :T0] = idx
        cache = KVCache(self.config, B, idx.device, self.head.weight.dtype)
        logits = self.forward_cached(idx[:, -bs:], cache)[:, -1, :]  # (B, V)
        for t in range(T0, T0 + max_new_tokens):
            idx_next = _sample_next(logits, temperature, top_k, generator)  # (B, 1)
            out[:, t : t + 1] = idx_next
            if t == T0 + max_new_tokens - 1:
                break
            if cache.length == bs:  # window full: re-encode the last bs - stride tokens + new
                cache.reset()
                window = out[:, t + 1 - (bs - stride + 1) : t + 1]  # (B, bs - stride + 1)
                logits = self.forward_cached(window, cache)[:, -1, :]
            else:
                logits = self.forward_cached(idx_next, cache)[:, -1, :]  # (B, V)
        return out
