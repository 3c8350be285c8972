"""Interpretability figures of a few fixed validation windows, logged as images to W&B.

Every ``every_n_validations`` validation runs, the first ``num_samples`` windows of the first
validation batch are traced (:func:`heartgpt.inference.interpretability.trace_tokens`) and the chosen figures of
:mod:`heartgpt.inference.interpretability` / :mod:`heartgpt.inference.plots` are logged, one W&B key per figure and one
image per window:

* ``heads``: every head's (query x key) map, one figure per chosen layer
  (``<prefix>/attention_layer<l>``);
* ``aggregate``: per layer, the head-summed attention row of the last token
  (``<prefix>/attention_aggregate``);
* ``folded``: attention on previous cardiac cycles by phase (``<prefix>/attention_folded``);
* ``homonyms``: hidden-state similarity of same-value tokens on rising vs falling edges
  (``<prefix>/homonyms``).

A figure a window cannot give (no cardiac period or no homonym tokens in a short window) is
skipped with a warning. Without a :class:`WandbLogger` nothing is done; under FSDP it is
skipped, and only global rank zero renders.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities import rank_zero_warn
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from heartgpt.data.tokenizer import get_modality
from heartgpt.inference import interpretability as interpret
from heartgpt.inference import plots

FIGURES = ("heads", "aggregate", "folded", "homonyms")


def figure_rgb(fig: Figure, dpi: int = plots.DPI) -> np.ndarray:
    """Render a figure to an RGB (H, W, 3) uint8 array."""
    fig.set_dpi(dpi)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def window_figures(
    trace: interpret.Trace, sample_rate: float, figures: Sequence[str], layers: Sequence[int],
    query: int = -1, title: str = "",
) -> dict[str, Figure | ValueError]:
    """The chosen figures of one traced window by W&B name; a figure the window cannot give is
    its ``ValueError`` instead."""
    att, tokens = trace.attentions, trace.tokens
    builders: dict[str, Callable[[], Figure]] = {}
    if "heads" in figures:
        for layer in layers:
            builders[f"attention_layer{layer}"] = lambda layer=layer: plots.plot_attention_heads(
                att[layer], layer, title=f"{title} layer {layer}".strip())
    if "aggregate" in figures:
        q = query % len(tokens)
        builders["attention_aggregate"] = lambda: plots.plot_aggregate_attention(
            tokens, interpret.aggregate_attention(att, q), sample_rate, q,
            title=f"{title} attention of position {q}, heads summed".strip())

    def folded() -> Figure:
        period = interpret.estimate_period(tokens, sample_rate)
        return plots.plot_folded_attention(
            *interpret.folded_attention(att, period), period, sample_rate,
            title=f"{title} attention on previous cycles by phase".strip())

    def homonyms() -> Figure:
        h = interpret.homonyms(trace.hidden_states, tokens)
        return plots.plot_homonyms(h.similarity, h.labels, h.within, h.across, h.value,
                                   title=f"{title} hidden-state similarity of".strip())

    if "folded" in figures:
        builders["attention_folded"] = folded
    if "homonyms" in figures:
        builders["homonyms"] = homonyms
    out: dict[str, Figure | ValueError] = {}
    for name, build in builders.items():
        try:
            out[name] = build()
        except ValueError as e:
            out[name] = e
    return out


class AttentionMapLogger(L.Callback):
    """Log interpretability figures of ``num_samples`` validation windows every N validations.

    Args:
        every_n_validations: log at the N-th, 2N-th, ... validation run (sanity checks excluded).
        num_samples: windows taken from the start of the first validation batch.
        figures: any of ``heads``, ``aggregate``, ``folded``, ``homonyms`` (module docstring).
        layers: layers of the ``heads`` figures (negative: from the end; default all).
        query: query position of the ``aggregate`` view (default the last token).
        sample_rate: Hz of the tokens (default: the rate of the module's ``hparams.modality``).
        prefix: W&B keys are ``<prefix>/<figure>``.
    """

    def __init__(
        self,
        every_n_validations: int,
        num_samples: int,
        figures: Sequence[str] = ("heads", "aggregate"),
        layers: Sequence[int] | None = None,
        query: int = -1,
        sample_rate: float | None = None,
        prefix: str = "val",
    ) -> None:
        if every_n_validations < 1 or num_samples < 1:
            raise ValueError("every_n_validations and num_samples must be >= 1")
        unknown = sorted(set(figures) - set(FIGURES))
        if unknown or not figures:
            raise ValueError(f"figures must be a non-empty subset of {list(FIGURES)}, got "
                             f"{list(figures)}")
        self.every_n_validations = every_n_validations
        self.num_samples = num_samples
        self.figures = list(figures)
        self.layers = None if layers is None else list(layers)
        self.query = query
        self.sample_rate = sample_rate
        self.prefix = prefix
        self.validations = 0
        self._tokens: torch.Tensor | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Resolve the layers and the sample rate now, so a bad setting fails before training."""
        n_layer = pl_module.model.config.n_layer
        layers = range(n_layer) if self.layers is None else self.layers
        if any(not -n_layer <= i < n_layer for i in layers):
            raise ValueError(f"AttentionMapLogger: layers must be in {-n_layer}..{n_layer - 1}, "
                             f"got {self.layers}")
        self.layers = sorted({i % n_layer for i in layers})
        if self.sample_rate is None:
            self.sample_rate = get_modality(pl_module.hparams["modality"]).sample_rate

    def _wandb(self, trainer: L.Trainer) -> list[WandbLogger]:
        return [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]

    def on_validation_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._tokens is None and batch_idx == 0 and dataloader_idx == 0:
            x = batch[0] if isinstance(batch, list | tuple) else batch["tokens"]
            self._tokens = x[: self.num_samples].detach().cpu().clone()  # (n, T)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.validations += 1
        loggers = self._wandb(trainer)
        if not loggers or self._tokens is None or self.validations % self.every_n_validations:
            return
        if isinstance(trainer.strategy, FSDPStrategy):
            rank_zero_warn("AttentionMapLogger: skipped under FSDP (sharded blocks cannot be "
                           "called outside their FSDP wrappers)")
            return
        if not trainer.is_global_zero:
            return
        step = trainer.global_step
        images: dict[str, list[np.ndarray]] = {}
        captions: dict[str, list[str]] = {}
        for i, tokens in enumerate(self._tokens):
            trace = interpret.trace_tokens(pl_module.model, tokens)
            figs = window_figures(trace, self.sample_rate, self.figures, self.layers, self.query,
                                  title=f"step {step}, window {i}:")
            for name, fig in figs.items():
                if isinstance(fig, ValueError):
                    rank_zero_warn(f"AttentionMapLogger: no {name} figure of window {i}: {fig}")
                    continue
                images.setdefault(name, []).append(figure_rgb(fig))
                captions.setdefault(name, []).append(f"window {i}")
        for lg in loggers:
            for name, imgs in images.items():
                lg.log_image(key=f"{self.prefix}/{name}", images=imgs, step=step,
                             caption=captions[name])

    def state_dict(self) -> dict[str, int]:
        return {"validations": self.validations}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.validations = int(state_dict["validations"])
