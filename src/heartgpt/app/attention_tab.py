"""Attention tab: every head of a layer, the paper's aggregate view and the folded view."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from heartgpt.app.context import AppContext
from heartgpt.app.demos import SHORT_DEMOS
from heartgpt.app.inputs import Signal, load_for, output_file
from heartgpt.app.results import escape, figure_output, files_output
from heartgpt.app.tabs import tool_tab
from heartgpt.errors import InputError, about
from heartgpt.inference.interpretability import (
    attention_figures,
    estimate_period,
    folded_attention,
    save_trace,
    trace_signal,
)
from heartgpt.inference.plots import save_figure


def attention_run(
    signal: Signal, checkpoint: str, out_dir: Path, *, layer: int, query: int
) -> tuple[str, list[Path], list[Path]]:
    """(status, [heads, aggregate, folded] figures, files) of one context."""
    loaded, mod = load_for(checkpoint, "any", signal)
    with about(signal.name):
        trace = trace_signal(loaded.model, signal.samples, signal.rate_for(mod), mod)
    n_layer, n_head, T, _ = trace.attentions.shape
    if not -n_layer <= layer < n_layer:
        raise InputError("layer", f"must be in 0..{n_layer - 1} for {Path(checkpoint).name}")
    if not -T <= query < T:
        raise InputError("query position", f"must be in 0..{T - 1} (or negative from the end)")
    layer %= n_layer
    with about(signal.name):
        figs = attention_figures(trace, mod.sample_rate, [layer], query, title=signal.name)
        period = estimate_period(trace.tokens, mod.sample_rate)
    _, previous = folded_attention(trace.attentions, period)
    names = [f"attention_layer{layer}", "attention_aggregate", "attention_folded"]
    pngs = [save_figure(figs[n], output_file(out_dir, signal, f"_{n}.png")) for n in names]
    npz = save_trace(output_file(out_dir, signal, "_trace.npz"), trace, [layer],
                     sample_rate=mod.sample_rate, modality=mod.name,
                     checkpoint=Path(checkpoint).name)
    shares = ", ".join(f"{i}: {p:.3f}" for i, p in enumerate(previous))
    status = (f"{Path(checkpoint).name}: {n_layer} layers x {n_head} heads on the last {T} "
              f"samples of {signal.name}; layer {layer} shown, aggregate of position "
              f"{query % T}. Cardiac period {period} samples ({period / mod.sample_rate:.2f} s). "
              f"Share of attention on previous cycles by layer: {shares}.")
    return escape(status), pngs, [*pngs, npz]


def build(ctx: AppContext) -> None:
    """The Attention tab."""
    with tool_tab(ctx, "Attention", "attention", "att", "Attention weights of every head of one "
                  "layer (query x key), the paper's aggregate view (heads summed, one query's "
                  "row, per layer) and each layer's attention on previous cardiac cycles folded "
                  "by phase.") as tab:
        with tab.inputs(SHORT_DEMOS, "any", "checkpoint", run="Show attention"), gr.Row():
            layer = gr.Number(0, label="layer (heads shown)", precision=0, elem_id="att-layer")
            query = gr.Number(-1, label="query position (-1: last)", precision=0,
                              elem_id="att-query")
        with tab.results():
            heads = figure_output("every head of the layer", "att-heads")
            aggregate = figure_output("aggregate view", "att-aggregate")
            folded = figure_output("attention on previous cycles", "att-folded")
            files = files_output("downloads (PNGs; .npz: tokens, hidden states, this layer's "
                                 "attention)", "att-files")

    def show(signal: Signal, checkpoint: str, out_dir: Path, layer_value: float | None,
             query_value: float | None) -> tuple:
        text, pngs, out = attention_run(signal, checkpoint, out_dir, layer=int(layer_value or 0),
                                        query=int(-1 if query_value is None else query_value))
        return text, *pngs, out

    tab.connect(show, [layer, query], [heads, aggregate, folded, files],
                desc="tracing the model", show_progress_on=heads)
