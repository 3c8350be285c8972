"""Attention: the chunked dropout kernel (exact math, correct gradients, real dropout) and
``attend``, which picks the kernel."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from heartgpt.model import GPT, GPTConfig, attention
from heartgpt.model.attention import attend, chunked_attention, chunked_dropout_attention


def qkv(B=2, nh=3, T=37, hs=8, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(B, nh, T, hs, generator=g, dtype=dtype, requires_grad=True)
            for _ in range(3)]


@pytest.mark.parametrize("block", [1, 10, 37, 64])
def test_without_dropout_equals_sdpa(block):
    q, k, v = qkv()
    out = chunked_dropout_attention(q, k, v, 0.125, 0.0, block=block)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.125)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-12)
    grad = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), grad),
                    torch.autograd.grad(ref, (q, k, v), grad), strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


def test_gradients_with_dropout_match_finite_differences():
    q, k, v = qkv(B=1, nh=2, T=13, hs=4)

    def fn(q, k, v):  # a fixed seed: the same mask on every call
        return chunked_attention(q, k, v, 0.3, 0.3, 5, 1234)

    assert torch.autograd.gradcheck(fn, (q, k, v))


def test_dropout_equals_masked_weights():
    """With the mask the kernel drew, the output is (softmax(QK^T s) * mask / (1-p)) V."""
    q, k, v = qkv(B=1, nh=1, T=6, hs=4)
    T, p = 6, 0.5
    # One value per key: out[i] = sum_j w_ij m_ij v_j, so with v = identity rows we read w*m.
    v_eye = torch.eye(T, dtype=torch.float64)[None, None]
    out = chunked_attention(q, k, v_eye, 0.5, p, 64, 99)[0, 0]  # (T, T)
    w = torch.softmax((q @ k.transpose(-2, -1))[0, 0] * 0.5 + torch.full((T, T), float("-inf")).triu(1), -1)
    ratio = out / w
    kept = ratio > 0
    torch.testing.assert_close(ratio[kept], torch.full_like(ratio[kept], 1 / (1 - p)))
    assert torch.all(out.triu(1) == 0)


def test_dropout_rate_and_reproducibility():
    T = 200
    q = k = torch.zeros(4, 4, T, 8)  # uniform weights over the causal prefix
    v = torch.ones(4, 4, T, 8)
    out = chunked_dropout_attention(q, k, v, 1.0, 0.2, generator=torch.Generator().manual_seed(0))
    # row i averages i+1 values of 0 or 1/(1-p): its mean over rows is 1 in expectation
    assert out.mean().item() == pytest.approx(1.0, abs=0.01)
    again = chunked_dropout_attention(q, k, v, 1.0, 0.2, generator=torch.Generator().manual_seed(0))
    other = chunked_dropout_attention(q, k, v, 1.0, 0.2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, again) and not torch.equal(out, other)
    # with V = identity, out[..., i, j] = w_ij * m_ij: the last row shows the mask over T keys
    eye = torch.eye(T).expand(16, 4, T, T)
    masked = chunked_dropout_attention(torch.zeros(16, 4, T, 8), torch.zeros(16, 4, T, 8), eye,
                                       1.0, 0.2)
    assert (masked[..., -1, :] == 0).float().mean().item() == pytest.approx(0.2, abs=0.01)


def test_model_trains_with_chunked_attention():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=101, block_size=32, n_embd=32, n_head=4, n_layer=2,
                          dropout=0.2))
    model.train()
    idx = torch.randint(0, 101, (4, 32))
    loss = F.cross_entropy(model(idx).flatten(0, 1), idx.flatten())
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def _explicit(q, k, v, scale):
    """Reference: softmax(q k^T scale + offset causal mask) v; the queries are the last keys."""
    Tq, Tk = q.size(2), k.size(2)
    mask = torch.full((Tq, Tk), float("-inf"), dtype=q.dtype).triu(Tk - Tq + 1)
    w = torch.softmax(q @ k.transpose(-2, -1) * scale + mask, -1)
    return w @ v, w


@pytest.mark.parametrize(("Tq", "Tk"), [(37, 37), (5, 37), (1, 37), (1, 1)])
@pytest.mark.parametrize("need_weights", [False, True])
def test_attend_every_kernel_computes_offset_causal_attention(Tq, Tk, need_weights):
    """Full causal, new positions over a cache, one query: each kernel attend picks agrees."""
    q, k, v = qkv(T=Tk)
    q = q[:, :, Tk - Tq :]  # the last Tq positions
    y, w = attend(q, k, v, scale=0.3, need_weights=need_weights)
    ref_y, ref_w = _explicit(q, k, v, 0.3)
    torch.testing.assert_close(y, ref_y, atol=1e-12, rtol=1e-12)
    if need_weights:
        torch.testing.assert_close(w, ref_w, atol=1e-12, rtol=1e-12)
    else:
        assert w is None


def test_attend_picks_the_chunked_kernel_for_cpu_dropout(monkeypatch):
    q, k, v = qkv()
    calls = []

    def spy(*args, **kwargs):
        calls.append(args[3:5])  # (scale, dropout_p)
        return chunked_dropout_attention(*args, **kwargs)

    monkeypatch.setattr(attention, "chunked_dropout_attention", spy)
    torch.manual_seed(0)
    y, w = attend(q, k, v, scale=0.125, dropout_p=0.2)
    torch.manual_seed(0)
    assert torch.equal(y, chunked_dropout_attention(q, k, v, 0.125, 0.2)) and w is None
    attend(q, k, v, scale=0.125)  # no dropout: SDPA
    attend(q, k, v, scale=0.125, dropout_p=0.2, need_weights=True)  # weights: explicit
    assert calls == [(0.125, 0.2)]


def test_attend_with_weights_drops_out_the_weights_it_returns_undropped():
    q, k, v = qkv(B=1, nh=1, T=6, hs=4)
    v_eye = torch.eye(6, dtype=torch.float64)[None, None]  # out[i, j] = dropped weight w_ij
    torch.manual_seed(0)
    out, w = attend(q, k, v_eye, scale=0.5, dropout_p=0.5, need_weights=True)
    torch.testing.assert_close(w, _explicit(q, k, v_eye, 0.5)[1])
    ratio = out / w
    kept = ratio > 0
    assert 0 < kept.sum() < torch.count_nonzero(w)  # some weights dropped, some kept
    torch.testing.assert_close(ratio[kept], torch.full_like(ratio[kept], 2.0))


@pytest.mark.parametrize(("device", "kernel"), [("cpu", "chunked"), ("meta", "sdpa")])
def test_training_with_dropout_picks_the_kernel_by_device_type(device, kernel, monkeypatch):
    """CPU: the chunked kernel (no fused SDPA dropout there); any other device type (CUDA, MPS,
    XPU; ``meta`` stands in for them here) SDPA with ``dropout_p``."""
    used = []
    real_sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(attention, "chunked_dropout_attention",
                        lambda q, k, v, scale, p: used.append("chunked") or q)
    monkeypatch.setattr(attention.F, "scaled_dot_product_attention",
                        lambda *a, **kw: used.append("sdpa") or real_sdpa(*a, **kw))
    q = torch.randn(2, 4, 16, 8, device=device)
    attend(q, q, q, scale=0.125, dropout_p=0.2)
    assert used == [kernel]


def test_a_compiled_training_step_has_no_graph_break_and_matches_eager():
    """The chunked kernel is a custom operator with a tensor seed: ``torch.compile`` traces the
    whole network with dropout as one graph, and (same seed) computes what eager computes."""
    import torch._dynamo as dynamo

    torch._dynamo.reset()
    model = GPT(GPTConfig(vocab_size=101, block_size=64, n_embd=32, n_head=4, n_layer=3,
                          dropout=0.2)).train()
    x = torch.randint(0, 101, (2, 64), generator=torch.Generator().manual_seed(0))
    explained = dynamo.explain(model)(x)
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]

    def step(net: torch.nn.Module) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        torch.manual_seed(0)
        loss = net(x).float().logsumexp(-1).mean()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    eager_loss, eager_grads = step(model)
    compiled_loss, compiled_grads = step(torch.compile(model, backend="aot_eager"))
    assert torch.equal(eager_loss, compiled_loss)
    for a, b in zip(eager_grads, compiled_grads, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
