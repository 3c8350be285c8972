"""Training-step throughput and peak memory: heartgpt's GPT versus the released architecture.

Both models get the same weights and the same batches; forward, backward and an AdamW step,
fp32 on the CPU, dropout 0.2 as the released models were trained. Each measurement runs in its
own spawned process so that its peak memory is its own; ours and the baseline alternate.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
import torch.nn.functional as F

from bench.baseline import ReleasedGPT
from bench.common import in_child, peak_rss_mb, rss_mb
from heartgpt.checkpoints import to_released_state_dict
from heartgpt.model import GPT, GPTConfig


def _models(config: GPTConfig, impl: str) -> torch.nn.Module:
    torch.manual_seed(0)
    ours = GPT(config)
    if impl.startswith("ours"):
        return ours
    base = ReleasedGPT(config.vocab_size, config.block_size, config.n_embd, config.n_head,
                       config.n_layer, config.dropout)
    base.load_state_dict(to_released_state_dict(ours))
    return base


def measure_train_step(impl: str, batch: int, steps: int, warmup: int, config: dict) -> dict:
    """Tokens/s and peak memory of ``steps`` timed training steps (after ``warmup``)."""
    cfg = GPTConfig(**config)
    model = _models(cfg, impl).train()
    if impl == "ours_compile":
        model = torch.compile(model)
    optim = torch.optim.AdamW(model.parameters(), lr=3e-4)
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, cfg.vocab_size - 1, (batch, cfg.block_size + 1), generator=g)
    x, y = data[:, :-1], data[:, 1:]
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if impl == "ours_bf16"
                else contextlib.nullcontext())
    rss_before = rss_mb()

    def step() -> float:
        with autocast:
            out = model(x)
            logits = out[0] if isinstance(out, tuple) else out
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        return loss.item()

    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - t0) / steps
    return {
        "impl": impl, "batch": batch, "seconds_per_step": seconds,
        "tokens_per_s": batch * cfg.block_size / seconds,
        "peak_mb": peak_rss_mb(), "peak_over_start_mb": peak_rss_mb() - rss_before,
    }


def run(batches: list[int], steps: int, warmup: int, impls: list[str], config: dict,
        threads: int) -> list[dict]:
    rows = []
    for batch in batches:
        for impl in impls:
            # the baseline at batch 64 takes about a minute a step: time it once
            n = 1 if impl == "baseline" and batch >= 32 else steps
            rows.append(in_child(measure_train_step, threads, impl=impl, batch=batch, steps=n,
                                 warmup=warmup, config=config))
            print(f"train  {impl:13s} batch {batch:3d}: {rows[-1]['tokens_per_s']:8.0f} tok/s, "
                  f"peak {rows[-1]['peak_mb']:7.0f} MB", flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tiny", action="store_true", help="a seconds-long smoke run")
    args = parser.parse_args(argv)
    if args.tiny:
        config = dict(block_size=32, n_embd=32, n_head=4, n_layer=2, attn_scale=32**-0.5)
        run([4], 1, 1, ["baseline", "ours"], config, threads=1)
    else:
        run([8, 64], 2, 1, ["baseline", "ours", "ours_bf16"], {}, threads=2)


if __name__ == "__main__":
    main()
