"""Generation: 500 new tokens after a 500-token context, ours versus the released loop.

One sample (the released GUI's batch), the same weights and context for all three:

* ``baseline``: :meth:`bench.baseline.ReleasedGPT.generate` as shipped: eval mode but autograd
  on, the whole 500-token window re-run through the per-head loop every step;
* ``exact``: :func:`heartgpt.inference.generation.generate_tokens` ``mode="exact"`` (the same arithmetic:
  every step re-runs the window, positions re-indexed from 0; no autograd, fused attention);
* ``cached``: ``mode="cached"`` (KV cache, window re-encoded every ``stride`` = 100 tokens).

Each mode lives in its own spawned process (:func:`bench.common.interleave`), warmed up with a
short generation first; the modes take turns, one unit each per round: exact and baseline
generate ``500 / rounds`` tokens a round (continuing from the last 500 tokens of their previous
piece: with the window full, every step does the same work), cached mode a whole 500-token
generation (its re-encode schedule depends on where a call starts). Each round gives a ratio
(per-token times); the median and range of the rounds are reported. To see where a step's time
goes, the run also times the pieces of a step (:func:`breakdown`).
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from bench.baseline import ReleasedGPT
from bench.common import (
    best_of,
    interleave,
    measure,
    metric,
    parser,
    round_ratios,
    section,
    threads_for,
)
from heartgpt.inference.generation import generate_tokens
from heartgpt.model import GPT, GPTConfig, KVCache, default_stride
from heartgpt.model.released import to_released_state_dict

PAPER = dict(vocab_size=102, block_size=500, n_embd=64, n_head=8, n_layer=8, dropout=0.2,
             attn_scale=64**-0.5)
TINY = dict(vocab_size=102, block_size=32, n_embd=32, n_head=4, n_layer=2, dropout=0.2,
            attn_scale=32**-0.5)


def _models(config: dict) -> tuple[GPTConfig, GPT, ReleasedGPT]:
    cfg = GPTConfig(**config)
    torch.manual_seed(0)
    ours = GPT(cfg).eval()
    base = ReleasedGPT(cfg.vocab_size, cfg.block_size, cfg.n_embd, cfg.n_head, cfg.n_layer,
                       cfg.dropout)
    base.load_state_dict(to_released_state_dict(ours))
    base.eval()  # as the released script; no torch.no_grad() (its generate has none)
    return cfg, ours, base


def generate_unit(mode: str, config: dict, context: int, new_tokens: int, piece: int,
                  warmup: int):
    """One side of the comparison, warmed up; a unit generates ``piece`` tokens (exact,
    baseline: continuing from the last ``block_size`` tokens of the unit before) or, in cached
    mode, a whole ``new_tokens`` generation from the context. Returns the tokens generated."""
    cfg, ours, base = _models(config)
    ctx = np.random.default_rng(0).integers(0, cfg.vocab_size - 1, context)  # (T,)
    idx = torch.as_tensor(ctx).unsqueeze(0)  # (1, T)
    # The context fills the window, so every exact/baseline step does the same work and a
    # generation can be cut into pieces. Cached mode's re-encode schedule depends on where a
    # call starts, so each of its units is a whole generation.
    assert context == cfg.block_size
    state = {"tail": idx, "round": 0}
    if mode == "baseline":
        base.generate(idx, warmup)
    else:
        generate_tokens(ours, ctx, warmup, seed=0, mode=mode)

    def unit() -> int:
        r = state["round"] = state["round"] + 1
        if mode == "cached":
            generate_tokens(ours, ctx, new_tokens, seed=r, mode="cached")
            return new_tokens
        if mode == "baseline":
            out = base.generate(state["tail"], piece)  # (1, block_size + piece)
        else:
            sampled = generate_tokens(ours, state["tail"][0], piece, seed=r, mode="exact")
            out = torch.cat([state["tail"], torch.as_tensor(sampled)], 1)  # (1, T + piece)
        state["tail"] = out[:, -cfg.block_size :]
        return piece

    return unit


def breakdown_of(config: dict, context: int) -> dict:
    cfg, ours, base = _models(config)
    ctx = np.random.default_rng(0).integers(0, cfg.vocab_size - 1, context)
    return breakdown(ours, base, cfg, torch.as_tensor(ctx).unsqueeze(0)[:, -cfg.block_size :])


def rowblock_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                       rows: int = 100) -> torch.Tensor:
    """Causal attention in blocks of query rows, each over its keys 0..i1 only (inference)."""
    B, nh, T, hs = q.shape
    out = torch.empty_like(q)  # (B, nh, T, hs)
    mask = torch.full((T, T), float("-inf")).triu(1)  # (T, T)
    for i0 in range(0, T, rows):
        i1 = min(i0 + rows, T)
        s = q[:, :, i0:i1] @ k[:, :, :i1].transpose(-2, -1) * scale + mask[i0:i1, :i1]
        out[:, :, i0:i1] = s.softmax(-1) @ v[:, :, :i1]  # (B, nh, rows, hs)
    return out


def breakdown(ours: GPT, base: ReleasedGPT, cfg: GPTConfig, window: torch.Tensor) -> dict:
    """Where a step goes, with every core and with one (less exposed to other load).

    Exact mode: one forward of the window, its attention with SDPA and with row-blocked math,
    and ``torch.exp`` over its causal attention scores (no exact implementation avoids
    those). Cached mode: a one-token step and a re-encode of ``block_size - stride + 1``
    tokens (``generate_cached``'s default stride); the one-token step under ``no_grad`` and
    under ``torch.inference_mode`` (which ``generate_cached`` uses).
    """
    T = window.size(1)
    q, k, v = torch.randn(3, 1, cfg.n_head, T, cfg.head_size).unbind(0)  # (1, nh, T, hs)
    scores = torch.randn(cfg.n_layer * cfg.n_head * T * (T + 1) // 2)
    big = torch.randn(1024, 1024)
    cache = KVCache(cfg, 1)
    keep = cfg.block_size - default_stride(cfg.block_size) + 1

    def reencode() -> None:
        cache.reset()
        ours.forward_cached(window[:, -keep:], cache)

    def one_token() -> torch.Tensor:
        cache.length = keep
        return ours.forward_cached(window[:, -1:], cache)[0, -1]  # (n_out,)

    reencode()
    out = {}
    threads = torch.get_num_threads()
    for suffix, n in (("", threads), ("_1thread", 1)):
        torch.set_num_threads(n)
        with torch.no_grad():
            out["ours_forward" + suffix] = best_of(lambda: ours(window), 5)
            out["sdpa_attention" + suffix] = cfg.n_layer * best_of(
                lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                       scale=cfg.scale), 5)
            out["rowblock_attention" + suffix] = cfg.n_layer * best_of(
                lambda: rowblock_attention(q, k, v, cfg.scale), 5)
            out["exp_of_scores" + suffix] = best_of(lambda: torch.exp(scores), 5)
            out["gemm_1024" + suffix] = best_of(lambda: big @ big, 3)  # machine's matmul peak
            out["cached_token" + suffix] = best_of(one_token, 50)
            out["cached_reencode" + suffix] = best_of(reencode, 5)
        with torch.inference_mode():
            out["cached_token_inference_mode" + suffix] = best_of(one_token, 50)
        out["baseline_forward" + suffix] = best_of(lambda: base(window), 3)  # autograd on
    torch.set_num_threads(threads)
    return out


def main(argv: list[str] | None = None) -> dict:
    args = parser(__doc__).parse_args(argv)
    config = TINY if args.tiny else PAPER
    context = new = config["block_size"]
    threads = threads_for(args.tiny)
    t0 = time.perf_counter()
    piece = -(-new // args.rounds)
    print(f"generate  exact, cached, baseline interleaved, {args.rounds} rounds: exact and "
          f"baseline {piece} tokens a round, cached a whole {new}-token generation", flush=True)
    result = interleave(
        {mode: (generate_unit, dict(mode=mode, config=config, context=context, new_tokens=new,
                                    piece=piece, warmup=3))
         for mode in ("exact", "cached", "baseline")},
        args.rounds, threads=threads, inline=args.inline, reject_above=args.reject_above)

    def per_token(rnd: dict, mode: str) -> float:
        return rnd["seconds"][mode] / rnd["out"][mode]

    rows = []
    for mode in ("baseline", "exact", "cached"):
        per = [new * per_token(r, mode) for r in result["rounds"]]  # s for `new` tokens
        s = statistics.median(per)
        rows.append({"impl": mode, "seconds": s, "new_tokens": new, "tokens_per_s": new / s,
                     "range_s": f"{min(per):.2f}-{max(per):.2f}", "round_seconds": per,
                     "how": f"median of {len(per)} rounds" + (
                         "" if mode == "cached" else f" of {piece} tokens, scaled to {new}")})
        print(f"generate  {mode:8s}: {s:7.2f} s for {new} tokens", flush=True)
    bd = measure(breakdown_of, threads, args.inline, config=config, context=context)
    by = {r["impl"]: r for r in rows}
    exact_sp = round_ratios(result, lambda r: per_token(r, "baseline") / per_token(r, "exact"))
    cached_sp = round_ratios(result, lambda r: per_token(r, "baseline") / per_token(r, "cached"))
    ms = {k: 1e3 * v for k, v in bd.items()}
    step = 1e3 * by["exact"]["seconds"] / new
    C = config["n_embd"]
    linear_flops = 2 * context * 12 * C * C * config["n_layer"]  # qkv 3C^2, proj C^2, MLP 8C^2
    gemm_gflops = 2 * 1024**3 / bd["gemm_1024_1thread"] / 1e9
    linear_ms = 1e3 * linear_flops / (gemm_gflops * 1e9)
    exact_note = (
        f"exact mode re-runs the whole {context}-token window every step (positions are "
        f"re-indexed, so nothing carries over): {step:.1f} ms a step, one no-grad forward "
        f"{ms['ours_forward']:.1f} ms against the baseline's autograd forward "
        f"{ms['baseline_forward']:.1f} ms, so no loop can beat "
        f"{bd['baseline_forward'] / bd['ours_forward']:.1f}x with this forward. On one thread "
        f"(less disturbed): forward {ms['ours_forward_1thread']:.1f} vs "
        f"{ms['baseline_forward_1thread']:.1f} ms; 10x needs a forward under "
        f"{ms['baseline_forward_1thread'] / 10:.1f} ms, but its attention alone (head size "
        f"{config['n_embd'] // config['n_head']}, {config['n_layer']} layers) takes "
        f"{ms['sdpa_attention_1thread']:.1f} ms with SDPA and "
        f"{ms['rowblock_attention_1thread']:.1f} ms as row-blocked math, and torch.exp over "
        f"its {config['n_layer'] * config['n_head'] * context * (context + 1) // 2 / 1e6:.1f}M "
        f"causal scores alone {ms['exp_of_scores_1thread']:.1f} ms. Even with attention at "
        f"that exp cost only, the forward's {linear_flops / 1e6:.0f} MFLOP of linear layers at "
        f"this core's 1024x1024 matmul rate ({gemm_gflops:.0f} GFLOP/s) take "
        f"{linear_ms:.1f} ms more: {ms['exp_of_scores_1thread'] + linear_ms:.1f} ms against "
        f"the {ms['baseline_forward_1thread'] / 10:.1f} ms that 10x allows")
    n_reencode = max(0, -(-(new - 1) // default_stride(config["block_size"])))
    expected = new * bd["cached_token_inference_mode"] + (n_reencode + 1) * bd["cached_reencode"]
    cached_note = (
        f"cached mode: {ms['cached_token_inference_mode']:.2f} ms per one-token step "
        f"(GPT.forward_cached under torch.inference_mode; {ms['cached_token']:.2f} ms under "
        f"no_grad) and {ms['cached_reencode']:.1f} ms per re-encode (~{n_reencode} of them "
        f"plus the prefill): about {expected:.2f} s expected, the one-token steps "
        f"{100 * new * bd['cached_token_inference_mode'] / expected:.0f}% of it, the rest "
        f"re-encoding; against the baseline's {ms['baseline_forward']:.1f} ms a token (one "
        f"thread: {ms['cached_token_inference_mode_1thread']:.2f} against "
        f"{ms['baseline_forward_1thread']:.1f} ms)")
    metrics = [
        metric("generate_exact", f"generation, {new} tokens after {context}: exact mode",
               by["exact"]["seconds"], "s", ref=by["baseline"]["seconds"], ref_what="baseline",
               spread=exact_sp, target=10.0, note=exact_note),
        metric("generate_cached", f"generation, {new} tokens after {context}: KV-cache mode",
               by["cached"]["seconds"], "s", ref=by["baseline"]["seconds"], ref_what="baseline",
               spread=cached_sp, target=50.0, note=cached_note),
    ]
    return section("generate", args, rows, metrics, time.perf_counter() - t0,
                   interleaved=[result], config=config, threads=threads, breakdown=bd)


if __name__ == "__main__":
    main()
