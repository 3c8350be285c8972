"""``predict``: recordings and hours of signal per minute, the whole job timed.

A folder of synthetic PPG recordings as users have them (CSV with a header, 125 Hz, 1 minute
each: 10 per round) goes through :func:`heartgpt.inference.predictor.predict` -- what
``python -m heartgpt.predict`` runs -- into a fresh output folder per round, in modes ``af``
(stride 50: a window per second of signal), ``beats`` (shift 100) and ``loss`` (back to back
windows), with a paper-size model (8 layers, 64 wide, context 500; random weights: the speed
does not depend on them) saved as a ``.safetensors`` file. A round times everything a user
waits for once the command has started: loading the model (once), listing and reading the
files, resampling, tokenising, the forward passes, storing each result and writing the tables.
Rounds are timed in this process with disturbed rounds rejected (:func:`bench.common.interleave`);
the median and range are reported.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import interleave, metric, parser, round_ratios, section, threads_for
from heartgpt.data.demo import draw_subjects, synthesize
from heartgpt.model import GPT, GPTConfig
from heartgpt.model.safetensors_file import save_safetensors

PAPER = dict(block_size=500, n_embd=64, n_head=8, n_layer=8, dropout=0.0)
TINY = dict(block_size=64, n_embd=32, n_head=4, n_layer=2, dropout=0.0)
RATE = 125.0
MODES = {"af": ("af", 1), "beats": ("beats", 1), "loss": ("pretrain", None)}


def write_folder(root: Path, n: int, minutes: float) -> float:
    """``n`` PPG recordings of ``minutes`` as CSV at 125 Hz; returns the hours of signal."""
    subject = draw_subjects("ppg", 1, seed=0)[0]
    rec = synthesize(subject, "ppg", n * minutes * 60)
    x = np.interp(np.arange(0, len(rec.signal) / rec.sample_rate, 1 / RATE),
                  np.arange(len(rec.signal)) / rec.sample_rate, rec.signal)
    per = int(minutes * 60 * RATE)
    root.mkdir(parents=True)
    for i in range(n):
        np.savetxt(root / f"rec-{i:03d}.csv", x[i * per : (i + 1) * per], fmt="%.6f",
                   header="PPG", comments="")
    return n * minutes / 60


def predict_unit(root: str, mode: str, config: dict, n: int, minutes: float):
    """A unit predicts the whole folder into a fresh output folder (model load included)."""
    from heartgpt.inference.predictor import predict
    from heartgpt.predict import compose_config

    root_path = Path(root)
    task, outputs = MODES[mode]
    torch.manual_seed(0)
    ckpt = save_safetensors(GPT(GPTConfig(vocab_size=102, out_features=outputs, **config)),
                            root_path / f"{mode}.safetensors", modality="ppg", task=task)
    data = root_path / "recordings"
    if not data.exists():
        write_folder(data, n, minutes)
    runs = iter(range(10**6))
    # a tiny model's window is shorter than the released beat shift of 100
    extra = ["mode.shift=16"] if mode == "beats" and config["block_size"] < 100 else []

    def run() -> dict:
        out = root_path / f"out-{mode}-{next(runs)}"
        cwd = os.getcwd()
        os.chdir(root_path)
        try:
            cfg = compose_config([f"mode={mode}", f"checkpoint={ckpt}", f"inputs={data}",
                                  f"sample_rate={RATE}", f"out_dir={out}",
                                  "trainer.enable_progress_bar=false", *extra])
            summary = predict(cfg)
        finally:
            os.chdir(cwd)
            shutil.rmtree(out, ignore_errors=True)
        assert summary["ok"] == n, summary
        return summary

    run()  # warm-up: imports, allocations
    return run


def main(argv: list[str] | None = None) -> dict:
    args = parser(__doc__).parse_args(argv)
    config = TINY if args.tiny else PAPER
    n, minutes = (4, 0.5) if args.tiny else (10, 1.0)
    threads = threads_for(args.tiny)
    hours = n * minutes / 60
    t0 = time.perf_counter()
    rows, metrics, results = [], [], []
    with tempfile.TemporaryDirectory(prefix="heartgpt-bench-predict-") as tmp:
        for mode in MODES:
            result = interleave(
                {"predict": (predict_unit, dict(root=tmp, mode=mode, config=config, n=n,
                                                minutes=minutes))},
                args.rounds, threads=threads, inline=True, reject_above=args.reject_above,
                log=None)
            results.append(result)
            seconds = result["sides"]["predict"]["seconds"]
            med = statistics.median(seconds)
            rows.append({"mode": mode, "threads": threads, "recordings": n,
                         "signal_hours": hours, "seconds": med,
                         "recordings_per_min": 60 * n / med,
                         "signal_hours_per_min": 60 * hours / med,
                         "range": f"{min(seconds):.1f}-{max(seconds):.1f}"})
            print(f"predict {mode:6s}: {med:6.1f} s for {n} recordings ({hours:.2f} h): "
                  f"{60 * n / med:.1f} recordings/min, {60 * hours / med:.2f} h of signal/min "
                  f"({result['rejected']} rounds rejected)", flush=True)
            sp = round_ratios(result, lambda r, h=hours: 60 * h / r["seconds"]["predict"])
            metrics.append(metric(f"predict_{mode}_hours_per_min",
                                  f"predict mode={mode}: hours of signal per minute "
                                  f"({n} x {minutes:g}-min CSV recordings, {threads} threads)",
                                  sp["median"], "h/min", ref=1 / 60,
                                  ref_what="real time (1 h per 60 min)", spread=sp,
                                  spread_of="value"))
    return section("predict", args, rows, metrics, time.perf_counter() - t0,
                   interleaved=results, config=config)


if __name__ == "__main__":
    main()
