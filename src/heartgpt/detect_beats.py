"""Detect heart beats in a finger-PPG recording of any length with the HeartGPT beat model.

``python -m heartgpt.detect_beats rec.csv --checkpoint PPGPT_beat_5k_iters.zip``

The procedure of the released beat-detection GUI: windows of ``block_size`` (500) samples every
``shift`` (100) samples, each tokenised on its own, run through the beat model in batches of up
to 150; the per-token sigmoid outputs are overlap-averaged ("stitched", float64) into a
per-sample beat confidence; beats are ``find_peaks(conf, height=0.015, width=(None, 20),
distance=14)``; the median peak height grades the signal quality Low (< 0.2051) <= Medium
(< 0.4598) <= High. With the released beat model it reproduces the reference outputs exactly
(``tail="release"``).

The end of the recording (``tail``):

* ``"align"`` (default): only full windows. Windows start at 0, shift, 2 shift, ... while they
  fit; if the last one does not end at the last sample, one more window is aligned to end
  there (the last 500 samples), so every sample is covered and no window is padded. Windows that
  cannot be tokenised (flat, NaN/inf) are skipped and reported; samples no usable window covers
  get confidence NaN (and no beat). A recording shorter than one window is an error.
* ``"release"``: the released behaviour, for parity: windows start at every multiple of
  ``shift`` below the length; a short tail window is tokenised on its own and zero-padded, and
  a window that cannot be tokenised becomes all zeros (which the model still reads, so the last
  sample of the reference example is averaged with the output of an all-zero window).

The two differ only near the end. On the reference example (7,001 samples) ``align`` changes
samples 6501..7000 (confidence by up to 0.090), finds the same 150 beats, two of them one
sample earlier (6868 and 6960 instead of 6869 and 6961), and a median peak height of 0.6543
instead of 0.6527 (High either way); ``release`` matches the reference within 6e-7.

Memory: :func:`beat_confidence_stream` reads the signal as an iterable of chunks and yields the
confidence as soon as no later window can change it; it holds at most one window plus one
chunk of signal and one batch of windows, so hours of recording stream in bounded memory.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from heartgpt.cli import (
    non_negative_float,
    output_path,
    positive_float,
    positive_int,
    run_tool,
    tool_arguments,
)
from heartgpt.data.readers import read_signal
from heartgpt.errors import InputError, about
from heartgpt.inference.beat_detection import (
    BATCH_SIZE,
    SHIFT,
    TAILS,
    beats_title,
    detect_beats,
    write_beats_csv,
)
from heartgpt.inference.loading import load_tool_model


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m heartgpt.detect_beats",
        parents=[tool_arguments("detect_beats", "beat fine-tuned checkpoint")],
        description="Beat detection and signal quality of a finger-PPG recording; writes "
                    "<stem>_beats.csv and <stem>_beats.png under outputs/detect_beats/.")
    p.add_argument("--tail", choices=TAILS, default="align",
                   help="align: last window ends at the last sample (default); release: "
                        "zero-padded tail windows as the released GUI")
    p.add_argument("--shift", type=positive_int, default=SHIFT, help=f"samples between windows ({SHIFT})")
    p.add_argument("--batch-size", type=positive_int, default=BATCH_SIZE)
    p.add_argument("--chunk-seconds", type=positive_float, default=600.0,
                   help="stream the recording through the model in chunks of this length")
    p.add_argument("--save-confidence", action="store_true",
                   help="also write the per-sample confidence as <stem>_beat_confidence.csv")
    p.add_argument("--plot-start", type=non_negative_float, default=0.0, help="plot from this second (0)")
    p.add_argument("--plot-seconds", type=non_negative_float, default=30.0,
                   help="seconds shown in the PNG (30; 0: all)")
    return p


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status (1 with one error line on bad input)."""
    args = build_parser().parse_args(argv)

    def body() -> None:
        loaded, mod = load_tool_model(args.checkpoint, "binary", args.modality, refuse_task="af",
                                      device=args.device)
        signal = read_signal(args.recording, allow_nan=True)
        rate = args.sample_rate or mod.sample_rate
        if args.plot_start >= len(signal) / rate:
            raise InputError(args.recording, f"--plot-start {args.plot_start:g} s is past the end "
                                            f"of the recording ({len(signal) / rate:g} s at {rate:g} Hz)")
        with about(args.recording):
            beats = detect_beats(loaded.model, signal, rate, mod, tail=args.tail,
                                 shift=args.shift, batch_size=args.batch_size,
                                 chunk_size=max(1, int(args.chunk_seconds * mod.sample_rate)))
        csv_path = write_beats_csv(output_path(args.out_dir, args.recording, "_beats.csv"),
                                   beats, rate)
        if args.save_confidence:
            np.savetxt(output_path(args.out_dir, args.recording, "_beat_confidence.csv"),
                       beats.confidence, fmt="%.8f", header="confidence", comments="")
        from heartgpt.inference.plots import plot_beats, save_figure

        start = int(args.plot_start * beats.sample_rate)
        length = int(args.plot_seconds * beats.sample_rate) or None
        fig = plot_beats(beats.signal, beats.confidence, beats.peaks, beats.sample_rate,
                         start=start, length=length,
                         title=beats_title(Path(args.recording).name, beats))
        png = save_figure(fig, output_path(args.out_dir, args.recording, "_beats.png"))
        if beats.skipped:
            print(f"skipped {len(beats.skipped)} window(s) that cannot be tokenised, e.g. at "
                  f"sample {next(iter(beats.skipped))}: {next(iter(beats.skipped.values()))}")
        print(f"{len(beats.peaks)} beats, median confidence {beats.median_height:.4f} "
              f"({beats.category}) -> {csv_path}, {png}")

    return run_tool(body)


if __name__ == "__main__":
    raise SystemExit(main())
