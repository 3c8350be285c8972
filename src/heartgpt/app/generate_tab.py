"""Generation tab: continue a context with a pre-trained model, the plot growing as it samples."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import gradio as gr
import numpy as np

from heartgpt.app.background import in_background
from heartgpt.app.context import AppContext
from heartgpt.app.demos import SHORT_DEMOS
from heartgpt.app.inputs import Signal, load_for, output_file
from heartgpt.app.results import escape, figure_output, files_output
from heartgpt.app.tabs import tool_tab
from heartgpt.data.tokenizer import tokenize_context
from heartgpt.errors import about
from heartgpt.inference.generation import MODES, generate_tokens, write_tokens_csv
from heartgpt.inference.plots import plot_generation, save_figure

UPDATES = 10  # plot refreshes per run


def _frame(context: np.ndarray, samples: np.ndarray, rate: float, title: str, path: Path) -> Path:
    """A quick PNG of the samples so far (the final figure goes through save_figure)."""
    fig = plot_generation(context, samples, rate, title=title)
    fig.savefig(path, dpi=80)
    return path


def generate_run(
    signal: Signal,
    checkpoint: str,
    out_dir: Path,
    *,
    new_tokens: int,
    num_samples: int,
    temperature: float,
    top_k: int | None,
    seed: int,
    mode: str,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> Iterator[tuple[str, Path | None, list[Path]]]:
    """Yield (status, figure, files) as the samples grow; the last has the downloads.

    :func:`generate_tokens` samples on a worker thread and reports every tenth of the run
    (at least 10 tokens); each report of exact mode becomes a frame of the growing plot and
    a step of ``progress(tokens done, total)``. Cached mode reports once, at the end.
    """
    if new_tokens < 1 or num_samples < 1 or seed < 0:
        raise ValueError(f"need new tokens >= 1, samples >= 1 and seed >= 0, got {new_tokens}, "
                         f"{num_samples} and {seed}")
    loaded, mod = load_for(checkpoint, "lm", signal)
    rate = signal.rate_for(mod)
    with about(signal.name):
        context = tokenize_context(signal.samples, rate, mod, loaded.model.config.block_size)
    title = f"{signal.name}: {Path(checkpoint).name}, {mode} mode, T={temperature}, seed {seed}"

    def sample(report: Callable[[int, int, np.ndarray], None]) -> np.ndarray:
        return generate_tokens(loaded.model, context, new_tokens, num_samples=num_samples,
                               temperature=temperature, top_k=top_k, seed=seed, mode=mode,
                               progress=report,
                               progress_every=max(10, math.ceil(new_tokens / UPDATES)))

    t0 = time.perf_counter()
    for k, (done, total, samples) in enumerate(in_background(sample)):  # the last: all tokens
        progress(done, total)
        if done < total:
            yield (f"generating: {done} / {total} tokens ...",
                   _frame(context, samples, mod.sample_rate, title, out_dir / f"frame{k}.png"), [])
    seconds = time.perf_counter() - t0
    csv_path = write_tokens_csv(output_file(out_dir, signal, "_generated.csv"), samples)
    npz_path = output_file(out_dir, signal, "_generated.npz")
    np.savez_compressed(npz_path, context=context, samples=samples, sample_rate=mod.sample_rate,
                        seed=seed, temperature=temperature, mode=mode)
    png = save_figure(plot_generation(context, samples, mod.sample_rate, title=title),
                      output_file(out_dir, signal, "_generated.png"))
    for frame in out_dir.glob("frame*.png"):
        frame.unlink()
    status = (f"Generated {num_samples} x {new_tokens} tokens after the last {len(context)} "
              f"samples of {signal.name} ({mod.name.upper()}, {rate:g} Hz) with "
              f"{Path(checkpoint).name}: {mode} mode, seed {seed}, temperature {temperature:g}, "
              f"top-k {top_k or 'all'}, {seconds:.1f} s.")
    yield escape(status), png, [csv_path, npz_path, png]


def build(ctx: AppContext) -> None:
    """The Generation tab."""
    with tool_tab(ctx, "Generation", "generate", "gen", "Continue a context (its last "
                  "`block_size` samples at the modality rate) with a pre-trained model; the "
                  "plot grows as tokens are sampled.") as tab:
        with tab.inputs(SHORT_DEMOS, "lm", "pre-trained checkpoint", run="Generate"):
            with gr.Row():
                new_tokens = gr.Number(200, label="new tokens", precision=0,
                                       elem_id="gen-new-tokens")
                num_samples = gr.Number(1, label="samples", precision=0, elem_id="gen-samples")
                seed = gr.Number(0, label="seed", precision=0, elem_id="gen-seed")
            with gr.Row():
                temperature = gr.Number(1.0, label="temperature", step=0.1,
                                        elem_id="gen-temperature")
                top_k = gr.Number(0, label="top-k (0: all)", precision=0, elem_id="gen-top-k")
                mode = gr.Radio(list(MODES), value="exact", label="mode",
                                info="cached: KV cache, faster, approximate once full",
                                elem_id="gen-mode")
        with tab.results():
            figure = figure_output("context and generated tokens", "gen-figure")
            files = files_output("downloads", "gen-files")

    def generate(signal: Signal, checkpoint: str, out_dir: Path, n_new: float | None,
                 n_samples: float | None, seed_value: float | None, temp: float | None,
                 k: float | None, gen_mode: str, *, progress: Callable[[int, int], None]
                 ) -> Iterator[tuple]:
        yield from generate_run(signal, checkpoint, out_dir, new_tokens=int(n_new or 0),
                                num_samples=int(n_samples or 0), temperature=float(temp or 0),
                                top_k=int(k) if k else None, seed=int(seed_value or 0),
                                mode=gen_mode, progress=progress)

    tab.connect(generate, [new_tokens, num_samples, seed, temperature, top_k, mode],
                [figure, files], desc="generating", unit="tokens",
                show_progress="minimal", show_progress_on=tab.status)  # the plot stays visible
