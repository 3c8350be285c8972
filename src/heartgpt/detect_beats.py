"""``python -m heartgpt.detect_beats rec.csv --checkpoint PPGPT_beat_5k_iters.zip``: the beats
of a finger-PPG recording of any length, their confidence and the signal quality.

Writes ``<stem>_beats.csv`` (one row a beat), ``<stem>_beats.json`` (beat count, median
confidence, quality, heart rate, windows skipped), with ``--save-confidence`` the per-sample
confidence, and a PNG (over a minute: an overview and the ``--plot-start``/``--plot-seconds``
zoom) under ``outputs/detect_beats/``. The procedure (the released GUI's, streamed in bounded
memory) is :mod:`heartgpt.inference.beat_detection`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from heartgpt.cli import (
    add_plot_window,
    check_plot_start,
    output_path,
    positive_float,
    positive_int,
    read_tool_recording,
    run_tool,
    save_plot,
    tool_parser,
)
from heartgpt.errors import about
from heartgpt.inference.beat_detection import (
    BATCH_SIZE,
    SHIFT,
    TAILS,
    beats_title,
    detect_beats,
    write_beats_csv,
    write_beats_json,
)
from heartgpt.inference.loading import load_tool_model


def build_parser() -> argparse.ArgumentParser:
    p = tool_parser("detect_beats", "beat fine-tuned checkpoint",
                    "Beat detection and signal quality of a finger-PPG recording; writes "
                    "<stem>_beats.csv, <stem>_beats.json and <stem>_beats.png under "
                    "outputs/detect_beats/.")
    p.add_argument("--tail", choices=TAILS, default="align",
                   help="align: last window ends at the last sample (default); release: "
                        "zero-padded tail windows as the released GUI")
    p.add_argument("--shift", type=positive_int, default=SHIFT, help=f"samples between windows ({SHIFT})")
    p.add_argument("--batch-size", type=positive_int, default=BATCH_SIZE)
    p.add_argument("--chunk-seconds", type=positive_float, default=600.0,
                   help="stream the recording through the model in chunks of this length")
    p.add_argument("--save-confidence", action="store_true",
                   help="also write the per-sample confidence as <stem>_beat_confidence.csv")
    add_plot_window(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status (1 with one error line on bad input)."""
    args = build_parser().parse_args(argv)

    def body() -> None:
        loaded, mod = load_tool_model(args.checkpoint, "binary", args.modality, refuse_task="af",
                                      device=args.device)
        signal, rate = read_tool_recording(args, mod, allow_nan=True)
        check_plot_start(args.recording, args.plot_start, len(signal), rate)
        with about(args.recording):
            beats = detect_beats(loaded.model, signal, rate, mod, tail=args.tail,
                                 shift=args.shift, batch_size=args.batch_size,
                                 chunk_size=max(1, int(args.chunk_seconds * mod.sample_rate)))
        csv_path = write_beats_csv(output_path(args.out_dir, args.recording, "_beats.csv"),
                                   beats, rate)
        json_path = write_beats_json(output_path(args.out_dir, args.recording, "_beats.json"),
                                     beats, args.recording, args.checkpoint)
        if args.save_confidence:
            np.savetxt(output_path(args.out_dir, args.recording, "_beat_confidence.csv"),
                       beats.confidence, fmt="%.8f", header="confidence", comments="")
        from heartgpt.inference.plots import plot_beats

        start = int(args.plot_start * beats.sample_rate)
        length = int(args.plot_seconds * beats.sample_rate) or None
        png = save_plot(output_path(args.out_dir, args.recording, "_beats.png"),
                        lambda: plot_beats(beats.signal, beats.confidence, beats.peaks,
                                           beats.sample_rate, start=start, length=length,
                                           title=beats_title(Path(args.recording).name, beats)))
        if beats.skipped:
            print(f"skipped {len(beats.skipped)} window(s) that cannot be tokenised, e.g. at "
                  f"sample {next(iter(beats.skipped))}: {next(iter(beats.skipped.values()))}")
        print(f"{len(beats.peaks)} beats, median confidence {beats.median_height:.4f} "
              f"({beats.category}) -> {csv_path}, {json_path}, {png}")

    return run_tool(body)


if __name__ == "__main__":
    raise SystemExit(main())
