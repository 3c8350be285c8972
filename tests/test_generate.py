"""Generation: KV cache equals full recompute, cached-mode semantics, released greedy parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from heartgpt.inference.generation import generate_tokens, sample_statistics, write_tokens_csv
from heartgpt.model import GPT, KVCache
from heartgpt.model.checkpoints import load_model
from tiny import tiny_gpt as tiny


@pytest.mark.parametrize("attn_scale", [None, 32**-0.5])
def test_kv_cache_logits_equal_full_recompute(attn_scale):
    model = tiny(attn_scale=attn_scale)
    idx = torch.randint(0, 101, (3, 64))
    with torch.no_grad():
        full = model(idx)  # (3, 64, V)
    cache = KVCache(model.config, 3)
    pieces = [(0, 10), (10, 11), (11, 30), (30, 31), (31, 64)]  # prefill, steps, chunks
    cached = torch.cat([model.forward_cached(idx[:, a:b], cache) for a, b in pieces], dim=1)
    assert cache.length == 64
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="exceed block_size"):
        model.forward_cached(idx[:, :1], cache)


def _reference_cached(model: GPT, idx: torch.Tensor, n: int, stride: int, seed: int):
    """The documented cached-mode semantics written with full forward passes."""
    bs = model.config.block_size
    g = torch.Generator().manual_seed(seed)
    window_start = max(0, idx.size(1) - bs)  # first token the current cache holds
    for _ in range(n):
        with torch.no_grad():
            logits = model(idx[:, window_start:])[:, -1]
        nxt = torch.multinomial(F.softmax(logits, -1), 1, generator=g)
        idx = torch.cat([idx, nxt], 1)
        if idx.size(1) - window_start > bs:  # full: keep bs - stride tokens before the new one
            window_start = idx.size(1) - (bs - stride + 1)
    return idx


@pytest.mark.parametrize("stride", [1, 7, 64])
def test_generate_cached_follows_its_documented_semantics(stride):
    model = tiny()
    idx = torch.randint(0, 101, (2, 50))
    got = model.generate_cached(idx, 100, generator=torch.Generator().manual_seed(3),
                                stride=stride)
    want = _reference_cached(model, idx, 100, stride, seed=3)
    assert torch.equal(got, want)


def test_cached_stride_one_is_exact_mode():
    model = tiny()
    ctx = np.random.default_rng(0).integers(0, 101, 40)
    exact = generate_tokens(model, ctx, 90, num_samples=3, seed=5, mode="exact")
    cached = generate_tokens(model, ctx, 90, num_samples=3, seed=5, mode="cached", stride=1)
    assert exact.shape == (3, 90)
    np.testing.assert_array_equal(exact, cached)


def test_generate_tokens_options():
    model = tiny()
    ctx = np.arange(100) % 101  # longer than block_size: the last 64 are used
    a = generate_tokens(model, ctx, 20, num_samples=4, seed=1)
    np.testing.assert_array_equal(a, generate_tokens(model, ctx, 20, num_samples=4, seed=1))
    assert not np.array_equal(a[0], a[1])  # the batch holds different samples
    greedy = generate_tokens(model, ctx, 5, top_k=1, mode="cached")
    with torch.no_grad():
        first = model(torch.from_numpy(ctx[-64:])[None])[0, -1].argmax().item()
    assert greedy[0, 0] == first
    stats = sample_statistics(a, period=5, sample_rate=50.0)
    assert stats["hist"].sum() == pytest.approx(1.0) and stats["std_sd"] >= 0
    with pytest.raises(ValueError, match="mode"):
        generate_tokens(model, ctx, 5, mode="fast")
    with pytest.raises(ValueError, match="language-model head"):
        generate_tokens(tiny(out_features=1), ctx, 5)
    with pytest.raises(ValueError, match="tokens must be in"):
        generate_tokens(model, np.array([1, 500]), 5)


@pytest.mark.parametrize(("mode", "every", "reports"), [
    ("exact", 7, [7, 14, 21, 28, 30]),
    ("exact", 30, [30]),
    ("exact", None, list(range(1, 31))),  # default: about 100 reports, at most one a token
    ("cached", 7, [30]),  # one report, at the end
])
def test_progress_hook_reports_without_changing_the_samples(mode, every, reports):
    model = tiny()
    ctx = np.random.default_rng(0).integers(0, 101, 50)  # 50 + 30 > 64: the window slides
    kw = dict(num_samples=2, temperature=0.9, top_k=50, seed=5, mode=mode)
    seen: list[tuple[int, int, np.ndarray]] = []
    got = generate_tokens(model, ctx, 30, **kw, progress_every=every,
                          progress=lambda done, total, tokens: seen.append((done, total, tokens)))
    ref = generate_tokens(model, ctx, 30, **kw)
    np.testing.assert_array_equal(got, ref)
    assert [done for done, _, _ in seen] == reports
    for done, total, tokens in seen:
        assert total == 30
        np.testing.assert_array_equal(tokens, ref[:, :done])  # the tokens so far


def test_progress_hook_can_stop_the_generation():
    class Stop(Exception):
        pass

    def stop_at_ten(done: int, total: int, tokens: np.ndarray) -> None:
        if done >= 10:
            raise Stop

    with pytest.raises(Stop):
        generate_tokens(tiny(), np.arange(10), 1000, seed=0, progress=stop_at_ten,
                        progress_every=5)
    with pytest.raises(ValueError, match="progress_every"):
        generate_tokens(tiny(), np.arange(10), 5, progress=lambda *report: None,
                        progress_every=0)


def test_generate_keeps_a_training_model_in_training_mode():
    model = tiny().train()
    generate_tokens(model, np.arange(10), 3, seed=0)
    assert model.training


def test_write_tokens_csv(tmp_path):
    path = write_tokens_csv(tmp_path / "g.csv", np.array([[1, 2, 3], [4, 5, 6]]))
    lines = path.read_text().splitlines()
    assert lines[0] == "step,sample_0,sample_1"
    assert lines[1:] == ["0,1,4", "1,2,5", "2,3,6"]


@pytest.mark.shared
@pytest.mark.parametrize(("name", "weights"), [("ECG", "ECGPT_560k_iters"),
                                               ("PPG", "PPGPT_500k_iters")])
def test_released_greedy_and_cached_logits(name, weights, weights_dir, reference_dir):
    ref = np.load(reference_dir / f"example_context_{name}.npz")
    model = load_model(weights_dir / f"{weights}.zip").model
    tokens = torch.from_numpy(ref["tokens"])[None]  # (1, 500)
    cache = KVCache(model.config, 1)
    cached = torch.cat([model.forward_cached(tokens[:, :400], cache),
                        *(model.forward_cached(tokens[:, t : t + 1], cache)
                          for t in range(400, 500))], dim=1)[0]
    np.testing.assert_allclose(cached.numpy(), ref["logits"], atol=1e-4, rtol=1e-5)
    for mode in ("exact", "cached"):  # cached with stride 1 re-encodes as exact mode does
        greedy = generate_tokens(model, ref["tokens"], 32, top_k=1, mode=mode, stride=1)
        np.testing.assert_array_equal(greedy[0], ref["greedy_next32"])


def test_one_token_steps_from_an_empty_cache_equal_forward():
    """Every position decoded as its own one-token step (the path generate_cached takes)."""
    model = tiny()
    idx = torch.randint(0, 101, (2, 64))
    cache = KVCache(model.config, 2)
    with torch.inference_mode():
        steps = torch.cat([model.forward_cached(idx[:, t : t + 1], cache) for t in range(64)], 1)
        full = model(idx)
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=1e-5)
