"""Training-step throughput and peak memory: heartgpt's GPT versus the released architecture.

Both models get the same weights and the same batches; forward, backward and an AdamW step,
fp32 on the CPU, dropout 0.2 as the released models were trained. Each side runs in its own
long-lived spawned process (:func:`bench.common.interleave`), built and warmed up once, and the
sides take turns, one training step each per round (ours, baseline, ours, baseline, ...), so
that a change in the machine's load hits them alike; every ratio is the median of the rounds'
ratios, with their range. Peak memory (``peak_mb``) is each process's own ``VmHWM``, torch
included. At batch 8 ours is also run under ``torch.compile`` and under bf16
autocast, to see whether they help on this machine. With CUDA, ours also runs fp32, bf16
autocast and compiled on the GPU (SDPA's flash kernel takes the attention dropout there);
without CUDA those rows say "not measured".
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import time

import torch
import torch.nn.functional as F

from bench.baseline import ReleasedGPT
from bench.common import interleave, metric, parser, round_ratios, section, spread, threads_for
from heartgpt.model import GPT, GPTConfig
from heartgpt.model.released import to_released_state_dict

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


def train_unit(impl: str, batch: int, steps: int, warmup: int, config: dict):
    """Build ``impl`` and warm it up (``warmup`` steps); the unit is ``steps`` training steps."""
    cfg = GPTConfig(**config)
    device = "cuda" if "cuda" in impl else "cpu"
    model = build(cfg, impl).train().to(device)
    if impl.endswith("compile"):
        logging.getLogger("torch._dynamo").setLevel(logging.ERROR)
        model = torch.compile(model)
    optim = torch.optim.AdamW(model.parameters(), lr=3e-4)
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, cfg.vocab_size, (batch, cfg.block_size + 1), generator=g).to(device)
    x, y = data[:, :-1], data[:, 1:]
    bf16 = impl.endswith("bf16")
    autocast = torch.autocast(device, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def step() -> float:
        with autocast:
            out = model(x)
            logits = out[0] if isinstance(out, tuple) else out  # baseline: (logits, None)
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        return loss.item()  # .item() also synchronises a GPU

    def unit() -> dict | None:
        for _ in range(steps):
            step()
        if device == "cuda":
            return {"cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20}
        return None

    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    return unit, {"warmup_s": time.perf_counter() - t0, "steps": steps}


CUDA_ROWS = [("ours_cuda", "CUDA fp32"), ("ours_cuda_bf16", "CUDA bf16"),
             ("ours_cuda_compile", "CUDA torch.compile")]


def plan(tiny: bool) -> list[tuple[int, list[tuple[str, int, int]]]]:
    """Interleaved groups: (batch, [(impl, steps per unit, warm-up steps), ...]), ours first."""
    if tiny:
        return [(4, [(impl, 1, 1) for impl in ("ours", "baseline", "ours_bf16")])]
    groups = [(8, [("ours", 1, 1), ("baseline", 1, 1), ("ours_bf16", 1, 1),
                   ("ours_compile", 1, 1)]),
              # the baseline at batch 64 takes about 46 s a step: one step per round
              (64, [("ours", 1, 1), ("baseline", 1, 1)])]
    if torch.cuda.is_available():
        groups[1][1].extend([(impl, 10, 3) for impl, _ in CUDA_ROWS])
    return groups


def rows_of(batch: int, result: dict, config: dict) -> list[dict]:
    rows = []
    for impl, side in result["sides"].items():
        steps = side["info"]["steps"]
        per_step = [s / steps for s in side["seconds"]]
        med = statistics.median(per_step)
        row = {"impl": impl, "batch": batch, "seconds_per_step": med,
               "range_s": f"{min(per_step):.2f}-{max(per_step):.2f}", "step_times": per_step,
               "rounds": len(per_step), "warmup_s": side["info"]["warmup_s"],
               "tokens_per_s": batch * config["block_size"] / med, "peak_mb": side["peak_mb"]}
        outs = [r["out"][impl] for r in result["rounds"] if r["out"][impl]]
        if outs:
            row["cuda_peak_mb"] = max(o["cuda_peak_mb"] for o in outs)
        rows.append(row)
    return rows


def metrics_of(results: dict[int, dict], rows: list[dict], config: dict) -> list[dict]:
    """Every ratio from the interleaved rounds: per-round ratio, median and range."""
    by = {(r["batch"], r["impl"]): r for r in rows}
    out = []
    for batch, result in sorted(results.items()):
        sides = result["sides"]
        if "baseline" not in sides or "ours" not in sides:
            continue

        def per_step(rnd: dict, impl: str, sides: dict = sides) -> float:
            return rnd["seconds"][impl] / sides[impl]["info"]["steps"]

        base, ours = by[batch, "baseline"], by[batch, "ours"]
        paper = batch == 64
        out.append(metric(
            f"train_b{batch}_speed", f"training step, batch {batch}: tokens/s",
            ours["tokens_per_s"], "tok/s", ref=base["tokens_per_s"], ref_what="baseline",
            spread=round_ratios(result, lambda r: per_step(r, "baseline") / per_step(r, "ours")),
            target=3.0 if paper else None))
        tt_mb = batch * config["n_head"] * config["block_size"] ** 2 * 4 / 2**20
        out.append(metric(
            f"train_b{batch}_memory", f"training step, batch {batch}: peak memory",
            ours["peak_mb"], "MB", ref=base["peak_mb"], ref_what="baseline",
            spread=spread([ours["peak_mb"] / base["peak_mb"]], result, kind="peak")
            | {"n": len(result["rounds"])},
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
                           *CUDA_ROWS]:
            if impl not in sides:
                if (batch == max(results) and impl.startswith("ours_cuda")
                        and not torch.cuda.is_available()):
                    out.append(metric(
                        f"train_b{batch}_{impl}", f"training step, batch {batch}, {what}: tokens/s",
                        None, "tok/s", note="not measured: no CUDA device on this machine"))
                continue
            r = by[batch, impl]
            sp = round_ratios(result, lambda rnd, i=impl: per_step(rnd, "ours") / per_step(rnd, i))
            gain = sp["median"]
            note = ("helps" if sp["min"] > 1.0 and gain > 1.05
                    else "does not help" if sp["max"] < 1.0 and gain < 0.95
                    else "no clear difference (the rounds' range spans both sides of 1 or "
                         "the median is within 5%)")
            if impl == "ours_compile":
                note += (f"; compiling took the first step, {r['warmup_s']:.0f} s (one graph: "
                         "the chunked dropout attention is a custom operator)")
            out.append(metric(
                f"train_b{batch}_{impl}", f"training step, batch {batch}, {what}: tokens/s",
                r["tokens_per_s"], "tok/s", ref=ours["tokens_per_s"],
                ref_what="ours fp32 CPU", spread=sp, note=note))
    return out


def main(argv: list[str] | None = None) -> dict:
    args = parser(__doc__).parse_args(argv)
    config = TINY if args.tiny else PAPER
    threads = threads_for(args.tiny)
    t0 = time.perf_counter()
    rows: list[dict] = []
    results: dict[int, dict] = {}
    for batch, sides in plan(args.tiny):
        print(f"train     batch {batch}: {', '.join(s[0] for s in sides)} interleaved, "
              f"{args.rounds} rounds", flush=True)
        results[batch] = interleave(
            {impl: (train_unit, dict(impl=impl, batch=batch, steps=steps, warmup=warmup,
                                     config=config)) for impl, steps, warmup in sides},
            args.rounds, threads=threads, inline=args.inline, reject_above=args.reject_above)
        rows += rows_of(batch, results[batch], config)
        for r in rows[-len(sides):]:
            print(f"train     {r['impl']:14s} batch {batch:3d}: {r['tokens_per_s']:8.0f} tok/s, "
                  f"{r['range_s']} s/step, peak {r['peak_mb']:7.0f} MB", flush=True)
    return section("train", args, rows, metrics_of(results, rows, config),
                   time.perf_counter() - t0, interleaved=list(results.values()),
                   config=config, threads=threads)


if __name__ == "__main__":
    main()
