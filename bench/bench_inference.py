"""``detect_beats`` and ``screen_af``: seconds of compute per hour of recording.

Paper-size 1-output models (8 layers, 64 wide, context 500) with random weights -- the speed
does not depend on the weights -- run on synthetic demo recordings at their native rates (PPG
125 Hz, ECG 500 Hz), so resampling, tokenising, batching, the forward passes and (beats) the
overlap-average and peak finding are all timed. A recording of a few minutes is timed and the
time scaled to one hour (every step is linear in the length). ``detect_beats`` runs with one
thread -- its target is per core: at least 20x faster than real time -- and with every core;
``screen_af`` (stride 50, as the paper's AF windows) with every core.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from bench.common import metric, parser, section, threads_for
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


def time_tool(name: str, fn, n: int, n_warm: int, minutes: float, threads: int) -> dict:
    """``fn(n)`` (``n`` samples, ``minutes`` of recording) after a warm-up ``fn(n_warm)``."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        fn(n_warm)  # allocations, kernels: the same tool on the first minute
        t0 = time.perf_counter()
        fn(n)
        seconds = time.perf_counter() - t0
    finally:
        torch.set_num_threads(before)
    per_hour = seconds * 60 / minutes
    return {"tool": name, "threads": threads, "minutes": minutes, "seconds": seconds,
            "seconds_per_hour": per_hour, "realtime_x": 3600 / per_hour,
            "realtime_x_per_core": 3600 / per_hour / threads}


def main(argv: list[str] | None = None) -> dict:
    args = parser(__doc__).parse_args(argv)
    config = TINY if args.tiny else PAPER
    beat_min, af_min = (0.5, 0.5) if args.tiny else (10.0, 3.0)
    shift = 16 if args.tiny else 100  # detect_beats' window shift (the released 100)
    cores = threads_for(args.tiny)
    t0 = time.perf_counter()
    ppg, ppg_rate = recording("ppg", max(beat_min, af_min))
    ecg, ecg_rate = recording("ecg", af_min)
    ppg_model, ecg_model = model(config, 102), model(config, 101)
    warm = min(60.0, beat_min * 60, af_min * 60)  # seconds of recording for the warm-up
    runs = [
        ("detect_beats ppg", lambda n: detect_beats(ppg_model, ppg[:n], ppg_rate, "ppg",
                                                    shift=shift),
         round(beat_min * 60 * ppg_rate), round(warm * ppg_rate), beat_min, sorted({1, cores})),
        ("screen_af ppg", lambda n: screen_af(ppg_model, ppg[:n], ppg_rate, "ppg"),
         round(af_min * 60 * ppg_rate), round(warm * ppg_rate), af_min, [cores]),
        ("screen_af ecg", lambda n: screen_af(ecg_model, ecg[:n], ecg_rate, "ecg"),
         round(af_min * 60 * ecg_rate), round(warm * ecg_rate), af_min, [cores]),
    ]
    rows = []
    for name, fn, n, n_warm, minutes, thread_counts in runs:
        for threads in thread_counts:
            rows.append(time_tool(name, fn, n, n_warm, minutes, threads))
            print(f"inference {name:16s} {threads} thread(s): "
                  f"{rows[-1]['seconds_per_hour']:7.1f} s per hour", flush=True)
    metrics = []
    for r in rows:
        what = f"{r['tool']}, {r['threads']} thread(s): seconds per hour of recording"
        key = f"{r['tool'].replace(' ', '_')}_t{r['threads']}"
        if r["tool"].startswith("detect_beats") and r["threads"] == 1:
            metrics.append(metric(key, what, r["seconds_per_hour"], "s/h", ref=3600.0,
                                  ref_what="real time (1 thread)",
                                  ratio=r["realtime_x_per_core"], target=20.0))
        else:
            plural = "s" * (r["threads"] > 1)
            metrics.append(metric(key, what, r["seconds_per_hour"], "s/h", ref=3600.0,
                                  ref_what=f"real time ({r['threads']} thread{plural})",
                                  ratio=r["realtime_x"]))
    return section("inference", args, rows, metrics, time.perf_counter() - t0, config=config)


if __name__ == "__main__":
    main()
