"""GPT: shapes, the two attention paths agree, reproducible generation."""

from __future__ import annotations

import pytest
import torch

from heartgpt.model import GPT, GPTConfig

TINY = dict(vocab_size=101, block_size=32, n_embd=32, n_head=4, n_layer=2, dropout=0.0)


def tiny(**overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(**{**TINY, **overrides})).eval()


def test_paper_size_matches_release():
    model = GPT(GPTConfig())  # defaults are the released ECGPT shape
    assert model.num_params() == 443_493  # the released ECGPT, less its 64 tril buffers
    assert GPT(GPTConfig(vocab_size=102)).num_params() == 443_622
    assert GPT(GPTConfig(out_features=1)).num_params() == 436_993
    assert GPTConfig().scale == pytest.approx(64**-0.5)
    assert GPTConfig(attn_scale=None, n_embd=64, n_head=8).scale == pytest.approx(8**-0.5)


def test_config_validation():
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="unknown GPTConfig"):
        GPTConfig.from_dict({"n_embed": 64})
    assert GPTConfig.from_dict(GPTConfig(n_layer=3).to_dict()) == GPTConfig(n_layer=3)


def test_forward_shapes_and_block_size():
    model = tiny()
    idx = torch.randint(0, 101, (3, 20))
    assert model(idx).shape == (3, 20, 101)
    assert tiny(out_features=1)(idx).shape == (3, 20, 1)
    with pytest.raises(ValueError, match="exceeds block_size"):
        model(torch.zeros(1, 33, dtype=torch.long))


@pytest.mark.parametrize("attn_scale", [None, 0.05])
def test_fast_and_inspect_paths_agree(attn_scale):
    model = tiny(attn_scale=attn_scale)
    idx = torch.randint(0, 101, (2, 32))
    with torch.no_grad():
        fast = model(idx)
        trace = model.inspect(idx)
    torch.testing.assert_close(trace.logits, fast, atol=1e-5, rtol=1e-5)
    assert trace.hidden_states.shape == (3, 2, 32, 32)
    assert trace.attentions.shape == (2, 2, 4, 32, 32)
    att = trace.attentions
    torch.testing.assert_close(att.sum(-1), torch.ones_like(att.sum(-1)))
    assert torch.all(att.triu(diagonal=1) == 0)  # causal


def test_gradients_agree_between_paths():
    model = tiny()
    model.train()  # dropout is 0, so the two paths compute the same function
    idx = torch.randint(0, 101, (2, 16))
    model(idx).sum().backward()
    fast = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.inspect(idx).logits.sum().backward()
    for a, p in zip(fast, model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, a, atol=1e-5, rtol=1e-4)


def test_causality():
    model = tiny()
    idx = torch.randint(0, 101, (1, 20))
    changed = idx.clone()
    changed[0, 15] = (idx[0, 15] + 7) % 101
    with torch.no_grad():
        a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :15], b[:, :15])
    assert not torch.allclose(a[:, 15:], b[:, 15:])


def test_generate_is_reproducible_with_a_seed():
    model = tiny()
    idx = torch.randint(0, 101, (2, 10))
    out1 = model.generate(idx, 40, generator=torch.Generator().manual_seed(7))
    out2 = model.generate(idx, 40, generator=torch.Generator().manual_seed(7))
    out3 = model.generate(idx, 40, generator=torch.Generator().manual_seed(8))
    assert out1.shape == (2, 50)  # runs past block_size=32: the context is cropped
    torch.testing.assert_close(out1, out2)
    assert not torch.equal(out1, out3)
    torch.testing.assert_close(out1[:, :10], idx)


def test_generate_top_k_one_is_greedy():
    model = tiny()
    idx = torch.randint(0, 101, (1, 10))
    out = model.generate(idx, 5, top_k=1)
    with torch.no_grad():
        expected = model(out[:, :-1])[0, 9:].argmax(-1)
    torch.testing.assert_close(out[0, 10:], expected)


def test_generate_refuses_task_head_and_bad_temperature():
    with pytest.raises(ValueError, match="language-model head"):
        tiny(out_features=1).generate(torch.zeros(1, 4, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="temperature"):
        tiny().generate(torch.zeros(1, 4, dtype=torch.long), 2, temperature=0)


def test_state_dict_keys_are_the_released_layout():
    model = GPT(GPTConfig(**{**TINY, "n_layer": 1}))
    block = ["ln1.weight", "ln1.bias", "attn.qkv.weight", "attn.proj.weight", "attn.proj.bias",
             "ln2.weight", "ln2.bias", "mlp.fc.weight", "mlp.fc.bias", "mlp.proj.weight",
             "mlp.proj.bias"]
    assert list(model.state_dict()) == [
        "token_embedding.weight", "position_embedding.weight", *(f"blocks.0.{k}" for k in block),
        "ln_f.weight", "ln_f.bias", "head.weight", "head.bias"]


def test_inspect_hidden_states_are_the_forward_pass():
    model = tiny()
    idx = torch.randint(0, 101, (2, 20))
    with torch.no_grad():
        trace = model.inspect(idx)
        torch.testing.assert_close(trace.hidden_states[0], model.embed(idx), atol=0, rtol=0)
        torch.testing.assert_close(model.ln_f(trace.hidden_states[-1]), model.hidden(idx),
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("need_weights", [False, True])
def test_block_over_a_cache_in_chunks_equals_one_pass(need_weights):
    """A block fed positions in pieces through its KV cache gives the one-pass outputs and
    attention-weight rows (padded with the keys it has not seen)."""
    model = tiny()
    block, cfg = model.blocks[1], model.config
    x = torch.randn(2, 30, cfg.n_embd)
    kv = torch.zeros(2, 2, cfg.n_head, cfg.block_size, cfg.head_size)  # keys, values
    with torch.no_grad():
        full, full_att = block(x, need_weights=True)  # (2, 30, C), (2, nh, 30, 30)
        for a, b in [(0, 7), (7, 8), (8, 20), (20, 21), (21, 30)]:
            y, att = block(x[:, a:b], kv, a, need_weights)
            torch.testing.assert_close(y, full[:, a:b], atol=1e-5, rtol=1e-5)
            if need_weights:
                assert att.shape == (2, cfg.n_head, b - a, b)
                torch.testing.assert_close(att, full_att[:, :, a:b, :b], atol=1e-6, rtol=1e-5)
            else:
                assert att is None


def test_training_attention_kernels(monkeypatch):
    """CPU training with dropout takes the chunked kernel; eval and inspect do not."""
    from heartgpt.model import attention

    calls = []
    chunked = attention.chunked_dropout_attention

    def spy(q, k, v, scale, dropout_p, *args, **kwargs):
        calls.append(dropout_p)
        return chunked(q, k, v, scale, dropout_p, *args, **kwargs)

    monkeypatch.setattr(attention, "chunked_dropout_attention", spy)
    model = tiny(dropout=0.2).train()
    idx = torch.randint(0, 101, (2, 16))
    model(idx)
    assert calls == [0.2, 0.2]  # one per layer
    model.inspect(idx)  # explicit weights, dropout on them
    model.eval()(idx)
    assert calls == [0.2, 0.2]
