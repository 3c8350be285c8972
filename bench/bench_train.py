"""Training-step throughput and peak memory: heartgpt's GPT versus the released architecture.

Both models get the same weights and the same batches; forward, backward and an AdamW step,
fp32 on the CPU, dropout 0.2 as the released models were trained. Each measurement runs in its
own spawned process so that its peak memory is its own (``peak_mb``: the child's peak resident
set, torch included). At batch 8 ours is also run under ``torch.compile`` and under bf16
autocast, to see whether they help on this machine. With CUDA, ours also runs fp32 and bf16
autocast on the GPU (SDPA's flash kernel takes the attention dropout there).
"""

from __future__ import annotations

import contextlib
import logging
import time

import torch
import torch.nn.functional as F

from bench.baseline import ReleasedGPT
from bench.common import measure, metric, parser, peak_rss_mb, rss_mb, section, threads_for
from heartgpt.model import GPT, GPTConfig
from heartgpt.model.checkpoints import to_released_state_dict

PAPER = dict(vocab_size=101, block_size=500, n_embd=64, n_head=8, n_layer=8, dropout=0.2,
             attn_scale=64**-0.5)
TINY = dict(vocab_size=101, block_size=32, n_embd=32, n_head=4, n_layer=2, dropout=0.2,
            attn_scale=32**-0.5)


def build(config: GPTConfig, impl: str) -> torch.nn.Module:
    """Ours, or the baseline holding the same weights (same seed, converted state dict)."""
    torch.manual_seed(0)
    ours = GPT(config)
    if impl != "baseline":
        return ours
    base = ReleasedGPT(config.vocab_size, config.block_size, config.n_embd, config.n_head,
                       config.n_layer, config.dropout)
    base.load_state_dict(to_released_state_dict(ours))
    return base


def measure_train_step(impl: str, batch: int, steps: int, warmup: int, config: dict) -> dict:
    """Tokens/s and peak memory of ``steps`` timed training steps (after ``warmup``)."""
    cfg = GPTConfig(**config)
    device = "cuda" if "cuda" in impl else "cpu"
    model = build(cfg, impl).train().to(device)
    if impl == "ours_compile":
        # the chunked dropout attention's seed (.item()) breaks the graph once per layer
        logging.getLogger("torch._dynamo").setLevel(logging.ERROR)
        model = torch.compile(model)
    optim = torch.optim.AdamW(model.parameters(), lr=3e-4)
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, cfg.vocab_size, (batch, cfg.block_size + 1), generator=g).to(device)
    x, y = data[:, :-1], data[:, 1:]
    bf16 = impl.endswith("bf16")
    autocast = torch.autocast(device, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    rss_before = rss_mb()

    def step() -> float:
        with autocast:
            out = model(x)
            logits = out[0] if isinstance(out, tuple) else out  # baseline: (logits, None)
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        return loss.item()  # .item() also synchronises a GPU

    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    warmup_s = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    seconds = sum(times) / len(times)
    row = {"impl": impl, "batch": batch, "seconds_per_step": seconds, "step_times": times,
           "warmup_s": warmup_s, "tokens_per_s": batch * cfg.block_size / seconds,
           "peak_mb": peak_rss_mb(), "peak_over_start_mb": peak_rss_mb() - rss_before}
    if device == "cuda":
        row["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return row


def plan(tiny: bool) -> list[tuple[int, str, int, int]]:
    """(batch, impl, timed steps, warmup steps) in the order they run."""
    if tiny:
        return [(4, impl, 1, 1) for impl in ("baseline", "ours", "ours_bf16")]
    runs = [(8, "baseline", 2, 1), (8, "ours", 3, 1), (8, "ours_bf16", 2, 1),
            (8, "ours_compile", 2, 1),
            # the baseline at batch 64 takes about a minute a step: time one
            (64, "baseline", 1, 1), (64, "ours", 2, 1)]
    if torch.cuda.is_available():
        runs += [(64, "ours_cuda", 10, 3), (64, "ours_cuda_bf16", 10, 3)]
    return runs


def metrics_of(rows: list[dict], config: dict) -> list[dict]:
    by = {(r["batch"], r["impl"]): r for r in rows}
    out = []
    for batch in sorted({r["batch"] for r in rows}):
        base, ours = by.get((batch, "baseline")), by.get((batch, "ours"))
        if base is None or ours is None:
            continue
        paper = batch == 64
        out.append(metric(
            f"train_b{batch}_speed", f"training step, batch {batch}: tokens/s",
            ours["tokens_per_s"], "tok/s", ref=base["tokens_per_s"], ref_what="baseline",
            target=3.0 if paper else None))
        tt_mb = batch * config["n_head"] * config["block_size"] ** 2 * 4 / 2**20
        out.append(metric(
            f"train_b{batch}_memory", f"training step, batch {batch}: peak memory",
            ours["peak_mb"], "MB", ref=base["peak_mb"], ref_what="baseline",
            target=1 / 3 if paper else None, lower_is_better=True,
            note=f"dropout {config['dropout']} on in both; ours takes it in "
                 "heartgpt.model.attention.chunked_dropout_attention, which never holds a "
                 f"(B, nh, T, T) tensor ({tt_mb:.0f} MB each at this batch; the baseline keeps "
                 f"several per layer for backward)" if paper else ""))
        if paper:
            out.append(metric(
                "train_b64_memory_abs", "training step, batch 64: peak memory under 5 GB",
                ours["peak_mb"], "MB", target=5000.0, target_on="value", lower_is_better=True))
        for impl, what in [("ours_bf16", "bf16 autocast"), ("ours_compile", "torch.compile"),
                           ("ours_cuda", "CUDA fp32"), ("ours_cuda_bf16", "CUDA bf16")]:
            if (batch, impl) in by:
                r = by[batch, impl]
                gain = r["tokens_per_s"] / ours["tokens_per_s"]
                note = ("helps" if gain > 1.05 else "does not help" if gain < 0.95
                        else "no clear difference (within 5%, about the run-to-run noise)")
                if impl == "ours_compile":
                    note += (f"; compiling took the first step, {r['warmup_s']:.0f} s (the "
                             "chunked dropout attention breaks the graph at every layer)")
                out.append(metric(
                    f"train_b{batch}_{impl}", f"training step, batch {batch}, {what}: tokens/s",
                    r["tokens_per_s"], "tok/s", ref=ours["tokens_per_s"],
                    ref_what="ours fp32 CPU", note=note))
    return out


def main(argv: list[str] | None = None) -> dict:
    args = parser(__doc__).parse_args(argv)
    config = TINY if args.tiny else PAPER
    threads = threads_for(args.tiny)
    t0 = time.perf_counter()
    rows = []
    for batch, impl, steps, warmup in plan(args.tiny):
        rows.append(measure(measure_train_step, threads, args.inline, impl=impl, batch=batch,
                            steps=steps, warmup=warmup, config=config))
        print(f"train     {impl:14s} batch {batch:3d}: {rows[-1]['tokens_per_s']:8.0f} tok/s, "
              f"peak {rows[-1]['peak_mb']:7.0f} MB", flush=True)
    return section("train", args, rows, metrics_of(rows, config), time.perf_counter() - t0,
                   config=config, threads=threads)


if __name__ == "__main__":
    main()
