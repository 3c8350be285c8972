"""AF screening tab: P(AF) per window and for the recording, and the attention shift of the
fine-tuned model against its pre-trained base (the released AF GUI's view)."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import gradio as gr

from heartgpt.app.catalog import default_base
from heartgpt.app.context import AppContext
from heartgpt.app.demos import SHORT_DEMOS
from heartgpt.app.inputs import Signal, checkpoint_input, load_for, output_file
from heartgpt.app.results import USER_ERRORS, escape, figure_output, files_output
from heartgpt.app.tabs import tool_tab
from heartgpt.data.signal_quality import load_trust
from heartgpt.data.tokenizer import tokenize_context
from heartgpt.errors import about, error_line
from heartgpt.inference.af_screening import DEFAULT_STRIDE, DEFAULT_THRESHOLD, screen_af, write_csv
from heartgpt.inference.interpretability import attention_shift
from heartgpt.inference.loading import window_probability_model
from heartgpt.inference.plots import plot_af, plot_attention_shift, save_figure
from heartgpt.inference.window_trust import trust_context


def _shift(signal: Signal, tuned_path: str, base_path: str, out_dir: Path
           ) -> tuple[Path, list[Path], str]:
    """Attention-shift figure, files and a sentence for the last window of the signal."""
    tuned, mod = load_for(tuned_path, "binary", signal, refuse_task="beats")
    base, _ = load_for(base_path, "lm", dataclasses.replace(signal, modality=mod.name))
    with about(signal.name):
        tokens = tokenize_context(signal.samples, signal.rate_for(mod), mod,
                                  tuned.model.config.block_size)
    with about(Path(base_path).name):
        shift = attention_shift(base.model, tuned.model, tokens)
    png = save_figure(plot_attention_shift(
        tokens, shift, mod.sample_rate,
        title=f"{signal.name}: last-layer attention of the last token, "
              f"{Path(tuned_path).name} minus {Path(base_path).name}"),
        output_file(out_dir, signal, "_attention_shift.png"))
    csv_path = output_file(out_dir, signal, "_attention_shift.csv")
    with csv_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["position", "token", "shift"])
        w.writerows([i, int(t), f"{s:.8f}"] for i, (t, s) in enumerate(zip(tokens, shift,
                                                                           strict=True)))
    text = (f" Attention shift (last {len(tokens)} samples): most gained +{shift.max():.4f} "
            f"at position {int(shift.argmax())}, most lost {shift.min():.4f} at "
            f"{int(shift.argmin())}.")
    return png, [png, csv_path], text


def af_run(
    signal: Signal, checkpoint: str, base: str | None, out_dir: Path, *, stride: int,
    threshold: float,
) -> tuple[str, Path, Path | None, list[Path]]:
    """(status, AF figure, attention-shift figure or None, files)."""
    loaded, mod = load_for(checkpoint, "binary", signal, refuse_task="beats")
    rate = signal.rate_for(mod)
    with about(signal.name):
        res = screen_af(window_probability_model(loaded), signal.samples, rate, mod,
                        stride=stride, threshold=threshold,
                        trust=trust_context(loaded, load_trust()))
    title = (f"{signal.name}: P(AF) = {res.recording_prob:.3f} ({res.averaged_text()}), "
             f"{100 * res.fraction_above:.0f}% of windows >= {threshold}")
    unreliable = res.trust.unreliable if res.trust is not None else None
    png = save_figure(plot_af(res.signal, res.sample_rate, res.starts, res.window, res.probs,
                              threshold, title=title, unreliable=unreliable),
                      output_file(out_dir, signal, "_af.png"))
    csv_path = write_csv(output_file(out_dir, signal, "_af.csv"), res)
    json_path = output_file(out_dir, signal, "_af.json")
    json_path.write_text(json.dumps({"recording": signal.name,
                                     "checkpoint": Path(checkpoint).name, **res.to_dict()},
                                    indent=1))
    status = (f"{signal.name}: P(AF) = {res.recording_prob:.4f} ({res.averaged_text()}; "
              f"{res.window} samples each), "
              f"{100 * res.fraction_above:.1f}% of windows >= {threshold}; "
              f"{len(res.skipped)} window(s) skipped.")
    if res.recording_disagreement:
        status += f" DISAGREEMENT: {res.recording_disagreement}."
    files = [csv_path, json_path, png]
    shift_png = None
    if base:
        try:
            shift_png, shift_files, text = _shift(signal, checkpoint, base, out_dir)
            files += shift_files
            status += text
        except USER_ERRORS as e:  # the screening stands; say why there is no shift
            status += f" No attention shift: {error_line(e)}"
    return escape(status), png, shift_png, files


def build(ctx: AppContext) -> None:
    """The AF screening tab."""
    with tool_tab(ctx, "AF screening", "af", "af", "Atrial-fibrillation probability of every "
                  "window of a recording of any length, and how fine-tuning moved the "
                  "attention of the last token (fine-tuned minus its pre-trained base).",
                  allow_nan=True) as tab:
        with tab.inputs(SHORT_DEMOS, "af", "AF fine-tuned checkpoint", run="Screen"):
            base = checkpoint_input(ctx.checkpoints, "lm", "pre-trained base (attention shift)",
                                    "af-base", optional=True,
                                    value=default_base(ctx.checkpoints, tab.checkpoint.value)
                                    or "")
            with gr.Row():
                stride = gr.Number(DEFAULT_STRIDE, label="window stride (samples)",
                                   precision=0, elem_id="af-stride")
                threshold = gr.Number(DEFAULT_THRESHOLD, label="threshold", step=0.05,
                                      elem_id="af-threshold")
        with tab.results():
            figure = figure_output("AF probability", "af-figure")
            shift = figure_output("attention shift after fine-tuning", "af-shift")
            files = files_output("downloads (CSV, JSON, PNGs)", "af-files")
    tab.checkpoint.input(lambda c: default_base(ctx.checkpoints, c) or "", tab.checkpoint, base,
                         queue=False, show_progress="hidden")

    def screen(signal: Signal, checkpoint: str, out_dir: Path, base_path: str | None,
               stride_value: float | None, threshold_value: float | None) -> tuple:
        return af_run(signal, checkpoint, base_path or None, out_dir,
                      stride=int(stride_value or 0),
                      threshold=float(DEFAULT_THRESHOLD if threshold_value is None
                                      else threshold_value))

    tab.connect(screen, [base, stride, threshold], [figure, shift, files],
                desc="screening windows", show_progress_on=figure)
