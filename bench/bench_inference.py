"""``detect_beats`` and ``screen_af``: seconds of compute per hour of recording.

Paper-size 1-output models (8 layers, 64 wide, context 500) with random weights -- the speed
does not depend on the weights -- run on synthetic demo recordings at their native rates (PPG
125 Hz, ECG 500 Hz), so resampling, tokenising, batching, the forward passes and (beats) the
overlap-average and peak finding are all timed. Each round times a recording of a minute or two
(``--rounds`` rounds, in this process, with disturbed rounds rejected: ``bench.common.interleave``)
and scales the time to one hour (every step is linear in the length); the median and range of
the rounds are reported. ``detect_beats`` runs with one
thread -- its target is per core: at least 20x faster than real time -- and with every core;
``screen_af`` (stride 50, as the paper's AF windows) with every core.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from bench.common import interleave, metric, parser, round_ratios, section, threads_for
from heartgpt.data.demo import draw_subjects, synthesize
from heartgpt.inference.af_screening import screen_af
from heartgpt.inference.beat_detection import detect_beats
from heartgpt.model import GPT, GPTConfig

PAPER = dict(block_size=500, n_embd=64, n_head=8, n_layer=8, dropout=0.2, attn_scale=64**-0.5,
             out_features=1)
TINY = dict(block_size=32, n_embd=32, n_head=4, n_layer=2, dropout=0.2, attn_scale=32**-0.5,
            out_features=1)


def recording(modality: str, minutes: float) -> tuple[np.ndarray, float]:
    rec = synthesize(draw_subjects(modality, 1, seed=0)[0], modality, minutes * 60)
    return rec.signal, float(rec.sample_rate)


def model(config: dict, vocab_size: int) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=vocab_size, **config)).eval()


_TOOLS = {"detect_beats": detect_beats, "screen_af": screen_af}


def tool_unit(tool: str, modality: str, config: dict, minutes: float, warm_s: float,
              shift: int):
    """``tool`` on ``minutes`` of a synthetic recording per unit, after a warm-up run on the
    first ``warm_s`` seconds (allocations, kernels)."""
    signal, rate = recording(modality, minutes)
    net = model(config, 102 if modality == "ppg" else 101)
    extra = {"shift": shift} if tool == "detect_beats" else {}

    def run(n: int) -> None:
        _TOOLS[tool](net, signal[:n], rate, modality, **extra)

    run(round(warm_s * rate))
    return lambda: run(len(signal))


def main(argv: list[str] | None = None) -> dict:
    args = parser(__doc__).parse_args(argv)
    config = TINY if args.tiny else PAPER
    beat_min, af_min = (0.25, 0.25) if args.tiny else (2.0, 1.0)  # per round
    shift = 16 if args.tiny else 100  # detect_beats' window shift (the released 100)
    cores = threads_for(args.tiny)
    t0 = time.perf_counter()
    runs = [("detect_beats", "ppg", beat_min, t) for t in sorted({1, cores})]
    runs += [("screen_af", "ppg", af_min, cores), ("screen_af", "ecg", af_min, cores)]
    rows, metrics, results = [], [], []
    for tool, modality, minutes, threads in runs:
        # each tool and thread count in this process (nothing to isolate), timed in rounds
        result = interleave(
            {"tool": (tool_unit, dict(tool=tool, modality=modality, config=config,
                                      minutes=minutes, warm_s=min(60.0, minutes * 60),
                                      shift=shift))},
            args.rounds, threads=threads, inline=True, reject_above=args.reject_above, log=None)
        results.append(result)
        per_hour = [s * 60 / minutes for s in result["sides"]["tool"]["seconds"]]
        name = f"{tool} {modality}"
        ph = statistics.median(per_hour)
        rows.append({"tool": name, "threads": threads, "minutes": minutes * len(per_hour),
                     "seconds": sum(result["sides"]["tool"]["seconds"]),
                     "seconds_per_hour": ph, "realtime_x": 3600 / ph,
                     "realtime_x_per_core": 3600 / ph / threads,
                     "range": f"{min(per_hour):.1f}-{max(per_hour):.1f}",
                     "round_seconds_per_hour": per_hour})
        print(f"inference {name:16s} {threads} thread(s): {ph:7.1f} s per hour "
              f"({rows[-1]['range']}, {result['rejected']} rounds rejected)", flush=True)
        what = f"{name}, {threads} thread(s): seconds per hour of recording"
        key = f"{name.replace(' ', '_')}_t{threads}"
        per_core = tool == "detect_beats" and threads == 1
        sp = round_ratios(result, lambda r, t=threads if per_core else 1, m=minutes:
                          m * 60 / r["seconds"]["tool"] / t)
        plural = "s" * (threads > 1)
        metrics.append(metric(key, what, ph, "s/h", ref=3600.0,
                              ref_what=f"real time ({threads} thread{plural})", spread=sp,
                              target=20.0 if per_core else None))
    return section("inference", args, rows, metrics, time.perf_counter() - t0,
                   interleaved=results, config=config)


if __name__ == "__main__":
    main()
