"""Causal attention: :func:`attend` picks the kernel; the chunked dropout kernel for CPU training.

:func:`attend` is the one place the model's attention kernel is chosen, by what is asked for
and the device type: the explicit softmax when the weights are wanted, one query without a mask
(cached decoding), :func:`chunked_dropout_attention` for CPU training with dropout, and
``F.scaled_dot_product_attention`` (causal, or with an offset causal mask) otherwise -- on
CUDA, MPS and XPU training with dropout included, where it has fused kernels.

Why a chunked kernel: ``F.scaled_dot_product_attention`` has no fused CPU kernel that supports
``dropout_p > 0``: with the released models' attention dropout of 0.2 it falls back to the
math path, which materialises (and keeps for backward) several (B, nh, T, T) tensors per layer.
That is where the released implementation's memory goes (about 14 GB at batch 64, context 500).

:func:`chunked_dropout_attention` computes the same function -- softmax weights, a Bernoulli
mask on them scaled by 1 / (1 - p), times V -- one block of query rows at a time, and keeps
only Q, K, V, the per-row log-sum-exp and one RNG seed for backward, where each block's weights
and mask are recomputed (the mask from the same seed, so forward and backward agree bit for
bit). Query block ``[i0, i1)`` only needs keys ``[0, i1)``, so the causal upper triangle is
never computed. Memory per layer is O(B nh T hs) instead of O(B nh T^2). Forward and backward
are registered as custom operators (``heartgpt::chunked_attention``) taking the seed as a
tensor, so ``torch.compile`` traces a training step with dropout without a graph break.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

_DEFAULT_BLOCK = 32  # query rows per block; 8-32 measured fastest on a 2-core CPU (B=64, T=500)


def _block_generator(device: torch.device, seed: int, block: int) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed + 1_000_003 * block)
    return g


def _keep_mask(shape: torch.Size, p: float, gen: torch.Generator, device: torch.device,
               dtype: torch.dtype) -> torch.Tensor:
    """Dropout mask already scaled: each entry 0 with probability p, else 1 / (1 - p).

    Uniform 16-bit draws, four from each 64-bit random number (3x cheaper than ``torch.rand``,
    which was most of the cost); p is thereby quantised to a multiple of 1/65536
    (0.2 -> 0.199997).
    """
    n = shape.numel()
    words = torch.randint(-(2**63), 2**63 - 1, ((n + 3) // 4,), generator=gen, device=device,
                          dtype=torch.int64)
    u16 = words.view(torch.int16)[:n].view(shape)  # uniform on -32768..32767
    keep = u16 >= round(p * 65536) - 32768
    return keep.to(dtype) * (1.0 / (1.0 - p))


def _chunked_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, p: float,
                     block: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Output (B, nh, T, hs) and per-row log-sum-exp (B, nh, T) of the chunked kernel."""
    B, nh, T, hs = q.shape
    out = q.new_empty(B, nh, T, v.shape[-1])  # (B, nh, T, hs)
    acc = torch.promote_types(q.dtype, torch.float32)  # softmax in >= fp32 under autocast
    lse = torch.empty(B, nh, T, device=q.device, dtype=acc)  # (B, nh, T)
    for bi, i0 in enumerate(range(0, T, block)):
        i1 = min(i0 + block, T)
        s = (q[:, :, i0:i1] @ k[:, :, :i1].transpose(-2, -1)).to(acc) * scale  # (B, nh, b, i1)
        causal = torch.ones(i1 - i0, i1, dtype=torch.bool, device=q.device).tril(i0)
        s = s.masked_fill(~causal, float("-inf"))
        row_lse = torch.logsumexp(s, dim=-1)  # (B, nh, b)
        w = torch.exp(s - row_lse.unsqueeze(-1))  # (B, nh, b, i1), softmax weights
        if p > 0:
            gen = _block_generator(q.device, seed, bi)
            w = w * _keep_mask(w.shape, p, gen, q.device, w.dtype)
        out[:, :, i0:i1] = (w.to(v.dtype) @ v[:, :, :i1])  # (B, nh, b, hs)
        lse[:, :, i0:i1] = row_lse
    return out, lse


def _chunked_backward(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      lse: torch.Tensor, scale: float, p: float, block: int, seed: int
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dq, dk, dv of the chunked kernel; weights and masks recomputed block by block."""
    T = q.shape[2]
    acc = lse.dtype
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    for bi, i0 in enumerate(range(0, T, block)):
        i1 = min(i0 + block, T)
        qb, kb, vb, gb = q[:, :, i0:i1], k[:, :, :i1], v[:, :, :i1], grad_out[:, :, i0:i1]
        s = (qb @ kb.transpose(-2, -1)).to(acc) * scale  # (B, nh, b, i1)
        causal = torch.ones(i1 - i0, i1, dtype=torch.bool, device=q.device).tril(i0)
        s = s.masked_fill(~causal, float("-inf"))
        w = torch.exp(s - lse[:, :, i0:i1].unsqueeze(-1))  # (B, nh, b, i1)
        dw = (gb @ vb.transpose(-2, -1)).to(acc)  # (B, nh, b, i1): d out / d dropped weights
        if p > 0:
            mask = _keep_mask(w.shape, p, _block_generator(q.device, seed, bi), q.device, w.dtype)
            dv[:, :, :i1] += (w * mask).to(v.dtype).transpose(-2, -1) @ gb  # (B, nh, i1, hs)
            dw = dw * mask
        else:
            dv[:, :, :i1] += w.to(v.dtype).transpose(-2, -1) @ gb
        ds = w * (dw - (dw * w).sum(-1, keepdim=True)) * scale  # softmax backward
        ds = ds.to(q.dtype)
        dq[:, :, i0:i1] = ds @ kb  # (B, nh, b, hs)
        dk[:, :, :i1] += ds.transpose(-2, -1) @ qb  # (B, nh, i1, hs)
    return dq, dk, dv


# The kernel as two custom operators: torch.compile sees each as one opaque node (the seed is a
# tensor, read inside), so a compiled training step has no graph break per layer.
@torch.library.custom_op("heartgpt::chunked_attention", mutates_args=())
def _chunked_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seed: torch.Tensor,
                          scale: float, p: float, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    return _chunked_forward(q, k, v, scale, p, block, int(seed.item()))


@_chunked_attention_op.register_fake
def _(q, k, v, seed, scale, p, block):
    B, nh, T, _ = q.shape
    acc = torch.promote_types(q.dtype, torch.float32)
    return q.new_empty(B, nh, T, v.shape[-1]), q.new_empty(B, nh, T, dtype=acc)


@torch.library.custom_op("heartgpt::chunked_attention_backward", mutates_args=())
def _chunked_backward_op(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                         v: torch.Tensor, lse: torch.Tensor, seed: torch.Tensor, scale: float,
                         p: float, block: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _chunked_backward(grad_out, q, k, v, lse, scale, p, block, int(seed.item()))


@_chunked_backward_op.register_fake
def _(grad_out, q, k, v, lse, seed, scale, p, block):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, seed, scale, p, block = inputs
    ctx.save_for_backward(q, k, v, output[1], seed)
    ctx.scale, ctx.p, ctx.block = scale, p, block


def _backward(ctx, grad_out, grad_lse):
    q, k, v, lse, seed = ctx.saved_tensors
    dq, dk, dv = _chunked_backward_op(grad_out.contiguous(), q, k, v, lse, seed, ctx.scale,
                                      ctx.p, ctx.block)
    return dq, dk, dv, None, None, None, None


torch.library.register_autograd("heartgpt::chunked_attention", _backward,
                                setup_context=_setup_context)


def chunked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, p: float,
                      block: int, seed: int | torch.Tensor) -> torch.Tensor:
    """The chunked kernel with an explicit dropout seed; q, k, v (B, nh, T, hs) -> (B, nh, T, hs)."""
    if not isinstance(seed, torch.Tensor):
        seed = torch.tensor([seed], dtype=torch.int64)
    return _chunked_attention_op(q, k, v, seed, scale, p, block)[0]


def chunked_dropout_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    dropout_p: float,
    block: int = _DEFAULT_BLOCK,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Causal softmax attention with dropout on the weights; q, k, v (B, nh, T, hs) -> (B, nh, T, hs).

    The dropout draw is seeded from ``generator`` (default: torch's global generator), so a
    seeded run is reproducible. The seed stays a tensor: nothing here leaves a compiled graph.
    """
    seed = torch.randint(0, 2**62, (1,), generator=generator)
    return chunked_attention(q, k, v, scale, dropout_p, block, seed)


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    dropout_p: float = 0.0,
    need_weights: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Causal attention of the queries over the keys: (output (B, nh, Tq, hs), weights or None).

    ``q`` (B, nh, Tq, hs) are the last ``Tq`` of the ``Tk`` positions of ``k``, ``v``
    (B, nh, Tk, hs), so query ``i`` sees keys ``0 .. Tk - Tq + i`` (``Tk == Tq``: plain causal
    attention; ``Tk > Tq``: new positions over a KV cache). Scores are multiplied by ``scale``;
    dropout ``dropout_p`` is applied to the softmax weights. With ``need_weights`` the weights
    are materialised and returned (B, nh, Tq, Tk), before dropout; otherwise the second item
    is ``None`` and a kernel that never holds them is used where one exists.
    """
    Tq, Tk = q.size(2), k.size(2)
    start = Tk - Tq  # position of the first query
    if need_weights:  # explicit: the (B, nh, Tq, Tk) weights are the point
        att = (q @ k.transpose(-2, -1)) * scale  # (B, nh, Tq, Tk)
        causal = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril(start)
        att = att.masked_fill(~causal, float("-inf")).softmax(dim=-1)  # (B, nh, Tq, Tk)
        y = F.dropout(att, dropout_p, training=dropout_p > 0) @ v  # (B, nh, Tq, hs)
        return y, att
    if Tq == 1:  # one new position (cached decoding) sees every key: no mask
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale)
    elif start > 0:  # new positions over cached ones: query i sees keys 0..start+i
        mask = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril(start)  # (Tq, Tk)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale
        )
    elif dropout_p > 0 and q.device.type == "cpu":
        # No fused CPU SDPA kernel supports dropout; its math fallback keeps T x T tensors.
        # CUDA, MPS, XPU ...: SDPA with dropout_p (flash / memory-efficient kernels).
        y = chunked_dropout_attention(q, k, v, scale, dropout_p)
    else:
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=dropout_p, is_causal=True, scale=scale
        )
    return y, None  # y: (B, nh, Tq, hs)
