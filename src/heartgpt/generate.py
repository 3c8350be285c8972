"""``python -m heartgpt.generate context.csv --checkpoint PPGPT_500k_iters.zip --new-tokens 500``:
continuations of an ECG/PPG context, written as CSV plus a PNG under ``outputs/generate/``.

The context may have any length and sampling rate (resampled to the modality rate, the last
``block_size`` samples tokenised); the sampling modes are :mod:`heartgpt.inference.generation`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from heartgpt.cli import (
    output_path,
    positive_float,
    positive_int,
    read_tool_recording,
    run_tool,
    tool_parser,
)
from heartgpt.errors import about
from heartgpt.inference.generation import (
    MODES,
    generate_from_signal,
    write_tokens_csv,
)
from heartgpt.inference.loading import load_tool_model


# ------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = tool_parser("generate", "pre-trained checkpoint",
                    "Continue an ECG/PPG context with a pre-trained HeartGPT model; writes "
                    "<stem>_generated.csv (tokens) and <stem>_generated.png under "
                    "outputs/generate/.",
                    recording="context",
                    recording_help="context recording (.csv / .txt one column, or .npy)")
    p.add_argument("--new-tokens", "-n", type=positive_int, default=500, help="tokens to generate (500)")
    p.add_argument("--samples", "-s", type=positive_int, default=1, help="continuations, one batch (1)")
    p.add_argument("--temperature", type=positive_float, default=1.0)
    p.add_argument("--top-k", type=positive_int, default=None, help="sample among the k most likely")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--mode", choices=MODES, default="exact",
                   help="exact: the released loop; cached: KV cache (approximate once full)")
    p.add_argument("--stride", type=positive_int, default=None,
                   help="cached mode: tokens generated between re-encodes (block_size // 5: 100)")
    return p


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status (1 with one error line on bad input)."""
    args = build_parser().parse_args(argv)

    def body() -> None:
        loaded, mod = load_tool_model(args.checkpoint, "lm", args.modality, device=args.device)
        signal, rate = read_tool_recording(args, mod, "context")
        with about(args.context):
            gen = generate_from_signal(
                loaded.model, signal, rate, mod, args.new_tokens, num_samples=args.samples,
                temperature=args.temperature, top_k=args.top_k, seed=args.seed, mode=args.mode,
                stride=args.stride)
        csv_path = write_tokens_csv(output_path(args.out_dir, args.context, "_generated.csv"),
                                    gen.samples)
        from heartgpt.inference.plots import plot_generation, save_figure

        fig = plot_generation(gen.context, gen.samples, gen.sample_rate,
                              title=f"{Path(args.context).name}: {Path(args.checkpoint).name}, "
                                    f"{args.mode} mode, T={args.temperature}")
        png = save_figure(fig, output_path(args.out_dir, args.context, "_generated.png"))
        print(f"generated {gen.samples.shape[0]} x {gen.samples.shape[1]} tokens "
              f"({args.mode}, {gen.seconds:.1f} s) -> {csv_path}, {png}")

    return run_tool(body)


if __name__ == "__main__":
    raise SystemExit(main())
