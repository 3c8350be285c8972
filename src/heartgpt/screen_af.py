"""``python -m heartgpt.screen_af rec.csv --checkpoint PPGPT_AF_1k_iters.zip --sample-rate 125``:
the AF probability of every window of a recording and of the whole recording.

Writes ``<stem>_af.csv``, ``<stem>_af.json`` and a PNG under ``outputs/screen_af/``. The
windowing (``--tail``: the end of the recording) and the recording-level summary are
:mod:`heartgpt.inference.af_screening`; recordings over a minute get an overview and a 30-s zoom.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from heartgpt.cli import (
    add_plot_window,
    check_plot_start,
    output_path,
    positive_int,
    probability,
    read_tool_recording,
    run_tool,
    save_plot,
    tool_parser,
)
from heartgpt.data.signal_quality import load_trust
from heartgpt.errors import about
from heartgpt.inference.af_screening import (
    BATCH_SIZE,
    DEFAULT_STRIDE,
    DEFAULT_TAIL,
    DEFAULT_THRESHOLD,
    TAILS,
    screen_af,
    write_csv,
)
from heartgpt.inference.loading import load_tool_model, window_probability_model
from heartgpt.inference.window_trust import trust_context


def build_parser() -> argparse.ArgumentParser:
    p = tool_parser("screen_af", "AF fine-tuned checkpoint",
                    "AF probability per window and for the recording; writes <stem>_af.csv, "
                    "<stem>_af.json and <stem>_af.png under outputs/screen_af/.")
    p.add_argument("--stride", type=positive_int, default=DEFAULT_STRIDE,
                   help=f"samples at the modality rate between windows ({DEFAULT_STRIDE})")
    p.add_argument("--tail", choices=TAILS, default=DEFAULT_TAIL,
                   help="align: one more window ending at the last sample, so every sample is "
                        "covered (flagged overlaps_previous; default); drop: only windows on "
                        "the stride grid, the last < stride samples unscreened")
    p.add_argument("--threshold", type=probability, default=DEFAULT_THRESHOLD)
    p.add_argument("--batch-size", type=positive_int, default=BATCH_SIZE)
    p.add_argument("--trust", default="default",
                   help="the trust thresholds: a conf/trust/<name>.yaml name or a yaml path "
                        "(default: default); none: no checks (the bare probabilities)")
    add_plot_window(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status (1 with one error line on bad input)."""
    args = build_parser().parse_args(argv)

    def body() -> None:
        loaded, mod = load_tool_model(args.checkpoint, "binary", args.modality,
                                      refuse_task="beats", device=args.device)
        signal, rate = read_tool_recording(args, mod, allow_nan=True)
        check_plot_start(args.recording, args.plot_start, len(signal), rate)
        with about(args.recording):
            trust = None if args.trust == "none" else trust_context(loaded,
                                                                     load_trust(args.trust))
            result = screen_af(window_probability_model(loaded), signal, rate, mod,
                               stride=args.stride, threshold=args.threshold,
                               batch_size=args.batch_size, tail=args.tail, trust=trust)
        csv_path = write_csv(output_path(args.out_dir, args.recording, "_af.csv"), result)
        json_path = output_path(args.out_dir, args.recording, "_af.json")
        json_path.write_text(json.dumps({"recording": str(args.recording),
                                         "checkpoint": str(args.checkpoint),
                                         **result.to_dict()}, indent=1))
        from heartgpt.inference.plots import plot_af

        png = save_plot(output_path(args.out_dir, args.recording, "_af.png"), lambda: plot_af(
            result.signal, result.sample_rate, result.starts, result.window, result.probs,
            result.threshold, zoom_start=int(args.plot_start * result.sample_rate),
            zoom_length=int(args.plot_seconds * result.sample_rate) or None,
            unreliable=result.trust.unreliable if result.trust is not None else None,
            title=f"{Path(args.recording).name}: P(AF) = {result.recording_prob:.3f} "
                  f"({result.averaged_text()}), "
                  f"{100 * result.fraction_above:.0f}% of windows >= {result.threshold}"))
        if result.skipped:
            print(f"skipped {len(result.skipped)} of {len(result.starts)} windows: "
                  + "; ".join(f"#{i} {why}" for i, why in list(result.skipped.items())[:3])
                  + (" ..." if len(result.skipped) > 3 else ""))
        if result.uncovered_end:
            print(f"--tail drop: the last {result.uncovered_end} samples in no window")
        if result.recording_disagreement:
            print(f"DISAGREEMENT: {result.recording_disagreement}")
        print(f"P(AF) = {result.recording_prob:.4f} ({result.averaged_text()}), "
              f"{100 * result.fraction_above:.1f}% of windows >= {result.threshold} -> "
              f"{csv_path}, {json_path}, {png}")

    return run_tool(body)


if __name__ == "__main__":
    raise SystemExit(main())
