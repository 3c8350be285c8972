"""The HeartGPT model: a small decoder-only transformer over tokenised ECG/PPG.

Architecture of the released HeartGPT (Davies, Monsen, Mandic 2024): token + learned absolute
position embeddings, pre-LayerNorm blocks of causal multi-head self-attention and a 4x ReLU MLP,
a final LayerNorm and a linear head. Attention uses one fused QKV projection and
``scaled_dot_product_attention``; the released models scale scores by ``n_embd ** -0.5`` rather
than ``head_size ** -0.5``, which ``GPTConfig.attn_scale`` expresses.

Plain PyTorch: no Lightning here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
from torch.nn import functional as F

from heartgpt.model.attention import chunked_dropout_attention


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
        shape = (config.n_layer, batch_size, config.n_head, config.block_size, config.head_size)
        self.k = torch.zeros(shape, device=device, dtype=dtype)  # (L, B, nh, block_size, hs)
        self.v = torch.zeros(shape, device=device, dtype=dtype)  # (L, B, nh, block_size, hs)
        self.length = 0

    @property
    def capacity(self) -> int:
        return self.k.size(3)

    def reset(self) -> None:
        """Forget every position (the buffers are reused)."""
        self.length = 0


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.scale = config.scale
        self.dropout = config.dropout
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=False)
        self.proj = nn.Linear(config.n_embd, config.n_embd)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)

    def _split_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        return q, k, v

    def _merge_heads(self, y: torch.Tensor) -> torch.Tensor:
        B, nh, T, hs = y.shape
        return y.transpose(1, 2).contiguous().view(B, T, nh * hs)  # (B, T, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split_heads(x)
        dropout_p = self.dropout if self.training else 0.0
        if dropout_p > 0 and not q.is_cuda:
            # No fused CPU SDPA kernel supports dropout; its math fallback keeps T x T tensors.
            y = chunked_dropout_attention(q, k, v, self.scale, dropout_p)  # (B, nh, T, hs)
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, dropout_p=dropout_p, is_causal=True, scale=self.scale
            )  # (B, nh, T, hs)
        return self.resid_dropout(self.proj(self._merge_heads(y)))  # (B, T, C)

    def forward_with_weights(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Explicit (materialised) attention that also returns the weights (B, nh, T, T)."""
        q, k, v = self._split_heads(x)
        T = x.size(1)
        att = (q @ k.transpose(-2, -1)) * self.scale  # (B, nh, T, T)
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        att = att.masked_fill(~causal, float("-inf")).softmax(dim=-1)  # (B, nh, T, T)
        y = self.attn_dropout(att) @ v  # (B, nh, T, hs)
        return self.resid_dropout(self.proj(self._merge_heads(y))), att

    def forward_cached(
        self, x: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor, start: int
    ) -> torch.Tensor:
        """Attend new positions ``start..start+T-1`` over the cached ones; no dropout.

        ``cache_k``/``cache_v`` (B, nh, block_size, hs) receive this call's keys and values.
        """
        q, k, v = self._split_heads(x)  # (B, nh, T, hs)
        end = start + x.size(1)
        cache_k[:, :, start:end] = k
        cache_v[:, :, start:end] = v
        keys, values = cache_k[:, :, :end], cache_v[:, :, :end]  # (B, nh, end, hs)
        mask = None
        if start > 0 and x.size(1) > 1:  # new query i sees keys 0..start+i
            mask = torch.ones(x.size(1), end, dtype=torch.bool, device=x.device).tril(start)
        y = F.scaled_dot_product_attention(
            q, keys, values, attn_mask=mask, is_causal=start == 0 and x.size(1) > 1,
            scale=self.scale,
        )  # (B, nh, T, hs)
        return self.proj(self._merge_heads(y))  # (B, T, C)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.relu(self.fc(x))))  # (B, T, C)


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))  # (B, T, C)
        return x + self.mlp(self.ln2(x))  # (B, T, C)

    def forward_with_weights(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, att = self.attn.forward_with_weights(self.ln1(x))
        x = x + a  # (B, T, C)
        return x + self.mlp(self.ln2(x)), att

    def forward_cached(
        self, x: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor, start: int
    ) -> torch.Tensor:
        x = x + self.attn.forward_cached(self.ln1(x), cache_k, cache_v, start)  # (B, T, C)
        return x + self.mlp(self.ln2(x))  # (B, T, C)


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

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        B, T = idx.shape
        if self.config.block_size < T:
            raise ValueError(f"sequence length {T} exceeds block_size {self.config.block_size}")
        pos = torch.arange(T, device=idx.device)  # (T,)
        return self.token_embedding(idx) + self.position_embedding(pos)  # (B, T, C)

    def hidden(self, idx: torch.Tensor) -> torch.Tensor:
        """Final normalised hidden states (B, T, C), the input of the head."""
        x = self.embed(idx)  # (B, T, C)
        for block in self.blocks:
            x = block(x)  # (B, T, C)
        return self.ln_f(x)  # (B, T, C)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden(idx))  # (B, T, n_out)

    def inspect(self, idx: torch.Tensor) -> GPTTrace:
        """Forward pass that also returns every block's input/output and attention weights.

        Uses the explicit attention path (T x T weights are materialised), so call it only
        when the internals are wanted; ``forward`` is unaffected.
        """
        x = self.embed(idx)  # (B, T, C)
        hidden, attn = [x], []
        for block in self.blocks:
            x, att = block.forward_with_weights(x)  # (B, T, C), (B, nh, T, T)
            hidden.append(x)
            attn.append(att)
        logits = self.head(self.ln_f(x))  # (B, T, n_out)
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
        cache was (re)started, at the new positions; inference only (no dropout).
        """
        B, T = idx.shape
        start = cache.length
        if start + T > cache.capacity:
            raise ValueError(f"{start} cached + {T} new tokens exceed block_size {cache.capacity}")
        if T == 1:
            return self._decode_one(idx, cache).unsqueeze(1)  # (B, 1, n_out)
        pos = torch.arange(start, start + T, device=idx.device)  # (T,)
        x = self.token_embedding(idx) + self.position_embedding(pos)  # (B, T, C)
        for layer, block in enumerate(self.blocks):
            x = block.forward_cached(x, cache.k[layer], cache.v[layer], start)  # (B, T, C)
        cache.length = start + T
        return self.head(self.ln_f(x))  # (B, T, n_out)

    def _decode_one(self, idx: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """:meth:`forward_cached` of one token per row: ``idx`` (B, 1) -> (B, n_out).

        The blocks' ``forward_cached`` arithmetic written as functional calls on the weights:
        a one-token step is ~100 tiny operations, so module-call overhead (hooks, no-op
        dropouts, head transposes) was a large part of its time.
        """
        cfg, pos = self.config, cache.length
        B, C, nh, hs = idx.size(0), cfg.n_embd, cfg.n_head, cfg.head_size
        x = self.token_embedding.weight[idx] + self.position_embedding.weight[pos]  # (B, 1, C)
        for layer, b in enumerate(self.blocks):
            h = F.layer_norm(x, (C,), b.ln1.weight, b.ln1.bias)
            # (B, 1, 3C) -> q, k, v (B, nh, 1, hs): with one position no transpose is needed
            q, k, v = F.linear(h, b.attn.qkv.weight).view(B, 3, nh, 1, hs).unbind(1)
            cache.k[layer, :, :, pos : pos + 1] = k
            cache.v[layer, :, :, pos : pos + 1] = v
            y = F.scaled_dot_product_attention(
                q, cache.k[layer, :, :, : pos + 1], cache.v[layer, :, :, : pos + 1],
                scale=cfg.scale,
            )  # (B, nh, 1, hs)
            x = x + F.linear(y.view(B, 1, C), b.attn.proj.weight, b.attn.proj.bias)
            h = F.layer_norm(x, (C,), b.ln2.weight, b.ln2.bias)
            h = F.relu(F.linear(h, b.mlp.fc.weight, b.mlp.fc.bias))  # (B, 1, 4C)
            x = x + F.linear(h, b.mlp.proj.weight, b.mlp.proj.bias)  # (B, 1, C)
        cache.length = pos + 1
        x = F.layer_norm(x[:, 0], (C,), self.ln_f.weight, self.ln_f.bias)  # (B, C)
        return F.linear(x, self.head.weight, self.head.bias)  # (B, n_out)

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
                logits = self._decode_one(idx_next, cache)  # (B, V)
        return out
