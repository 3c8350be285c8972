"""``python -m heartgpt.interpret {attention,homonyms,shift,export} context.csv --checkpoint C``:
interpretability figures (PNG) and exports (``.npz``) of one context, under
``outputs/interpret/``. The analyses are :mod:`heartgpt.inference.interpretability`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from heartgpt.cli import (
    output_path,
    read_tool_recording,
    run_tool,
    tool_arguments,
)
from heartgpt.data.tokenizer import tokenize_context
from heartgpt.errors import about
from heartgpt.inference.interpretability import (
    attention_figures,
    attention_shift,
    homonyms,
    save_trace,
    trace_tokens,
)
from heartgpt.inference.loading import load_tool_model


# ------------------------------------------------------------------------------- CLI
def _layers(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated layer numbers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    common = tool_arguments("interpret", "checkpoint to inspect", "context",
                            "context recording (.csv / .txt one column, or .npy); the last "
                            "block_size samples at the modality rate are used")
    p = argparse.ArgumentParser(prog="python -m heartgpt.interpret",
                                description="Interpretability figures and exports of a context, "
                                            "written under outputs/interpret/.")
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("attention", parents=[common], help="attention maps of every head per "
                       "layer, aggregate and folded views (PNGs)")
    a.add_argument("--layers", type=_layers, default=None, help="e.g. 0,7 (default: all)")
    a.add_argument("--query", type=int, default=-1, help="query position of the aggregate view")
    h = sub.add_parser("homonyms", parents=[common], help="hidden-state similarity of "
                       "same-value tokens on rising vs falling edges (PNG)")
    h.add_argument("--token-value", type=int, default=None)
    s = sub.add_parser("shift", parents=[common], help="last-layer attention of the last token, "
                       "fine-tuned (--checkpoint) minus --base (PNG)")
    s.add_argument("--base", required=True, help="the pre-trained base checkpoint (a "
                   "path, or a bare released name as for --checkpoint)")
    e = sub.add_parser("export", parents=[common], help="tokens, logits, hidden states and "
                       "attention as <stem>_trace.npz")
    e.add_argument("--layers", type=_layers, default=None, help="attention layers to keep")
    return p


def _run(args: argparse.Namespace) -> None:
    from heartgpt.inference.plots import plot_attention_shift, plot_homonyms, save_figure

    need = "binary" if args.command == "shift" else "any"
    loaded, mod = load_tool_model(args.checkpoint, need, args.modality, device=args.device)
    signal, rate = read_tool_recording(args, mod, "context")
    stem = Path(args.context).name
    written: list[Path] = []
    with about(args.context):
        tokens = tokenize_context(signal, rate, mod, loaded.model.config.block_size)
    if args.command == "shift":
        base, _ = load_tool_model(args.base, "lm", mod.name, device=args.device)
        with about(args.base):
            shift = attention_shift(base.model, loaded.model, tokens)
        fig = plot_attention_shift(tokens, shift, mod.sample_rate,
                                   title=f"{stem}: last-layer attention of the last token, "
                                         f"{Path(args.checkpoint).name} minus "
                                         f"{Path(args.base).name}")
        written.append(save_figure(fig, output_path(args.out_dir, args.context,
                                                    "_attention_shift.png")))
        np.save(output_path(args.out_dir, args.context, "_attention_shift.npy"), shift)
        print(f"attention shift: max +{shift.max():.4f} at {int(shift.argmax())}, "
              f"min {shift.min():.4f} at {int(shift.argmin())}")
    else:
        trace = trace_tokens(loaded.model, tokens)
        if args.command == "attention":
            n_layer = len(trace.attentions)
            if args.layers is not None and any(not -n_layer <= i < n_layer for i in args.layers):
                raise ValueError(f"{args.checkpoint}: layers must be in 0..{n_layer - 1}")
            with about(args.context):
                figs = attention_figures(trace, mod.sample_rate, args.layers, args.query,
                                         title=stem)
            for name, fig in figs.items():
                written.append(save_figure(fig, output_path(args.out_dir, args.context,
                                                            f"_{name}.png")))
        elif args.command == "homonyms":
            with about(args.context):
                res = homonyms(trace.hidden_states, trace.tokens, args.token_value)
            fig = plot_homonyms(res.similarity, res.labels, res.within, res.across, res.value,
                                title=f"{stem}: hidden-state cosine similarity of")
            written.append(save_figure(fig, output_path(args.out_dir, args.context,
                                                        "_homonyms.png")))
            print("depth  same-phase  other-phase\n" + "\n".join(
                f"{d:5d}  {w:10.3f}  {a:11.3f}" for d, (w, a) in
                enumerate(zip(res.within, res.across, strict=True))))
        else:
            written.append(save_trace(output_path(args.out_dir, args.context, "_trace.npz"),
                                      trace, args.layers, sample_rate=mod.sample_rate,
                                      modality=mod.name, checkpoint=str(args.checkpoint)))
    print("wrote " + ", ".join(map(str, written)))


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status (1 with one error line on bad input)."""
    args = build_parser().parse_args(argv)
    return run_tool(lambda: _run(args))


if __name__ == "__main__":
    raise SystemExit(main())
