"""What ``python -m heartgpt.predict`` computes for one recording, in each mode.

Every mode maps a model and one :class:`~heartgpt.data.readers.Recording` to a
:class:`RecordingPrediction`: one row for the per-recording table, rows for the second table
(a window or a beat each) and, for ``embed``, an array. The per-file tools compute the same
thing: ``af`` is :func:`~heartgpt.inference.af_screening.screen_af` and ``beats`` is
:func:`~heartgpt.inference.beat_detection.detect_beats`, called with the same settings, so a
folder run and ``screen_af``/``detect_beats`` on each file agree exactly.

* ``af``: AF probability per window and for the recording (a fine-tuned 1-output AF model).
* ``beats``: a row per detected beat, with the recording's count, quality and heart rate.
* ``loss``: the next-token cross-entropy of a pre-trained model on windows of ``block_size``
  samples (each tokenised on its own, as the model reads a context), predicting tokens 1..T-1
  from 0..T-2: how well the model fits the recording. The recording's ``mean_loss`` is the mean over windows
  and ``perplexity`` its exponential.
* ``head``: any fine-tuned head (:mod:`heartgpt.inference.head_prediction`): per-class
  probabilities and the predicted class, or values in the labels' units, per window or per
  tagged position, and the recording's class fractions or value statistics.
* ``embed``: the final-norm hidden states of each ``block_size`` window, pooled over positions
  (``mean``, or ``last``: the position a fine-tuned head reads), for downstream probes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from heartgpt.data.recording import Recording
from heartgpt.data.tokenizer import Modality, resample
from heartgpt.errors import InputError
from heartgpt.heads.applied import AppliedHead
from heartgpt.heads.registry import misread_by_tools
from heartgpt.inference import af_screening, beat_detection
from heartgpt.inference.af_screening import (
    no_usable_window,
    screen_af,
    tokenised_windows,
    window_starts,
)
from heartgpt.inference.beat_detection import beats_summary, detect_beats, quality_category
from heartgpt.inference.head_prediction import head_rows
from heartgpt.inference.loading import batched
from heartgpt.inference.window_trust import TrustContext, assess_windows
from heartgpt.model import GPT

MODES = ("af", "beats", "loss", "embed", "head")
AUTO = "auto"  # conf/mode/auto.yaml: the mode of what the checkpoint is (default_mode)
POOLS = ("mean", "last")
# What the model must be for each mode (heartgpt.inference.loading.load_tool_model's `need`)
# and the fine-tuned task it must not be.
MODEL_NEED = {"af": ("binary", "beats"), "beats": ("binary", "af"), "loss": ("lm", None),
              "embed": ("any", None), "head": ("head", None)}


@dataclass
class RecordingPrediction:
    """One recording's results: its table row, its window/beat rows, and (embed) an array."""

    row: dict[str, Any]
    items: list[dict[str, Any]] = field(default_factory=list)
    array: np.ndarray | None = None  # embed: (W_usable, n_embd) float32, in the order of items


AF_ROW = ("recording_af_prob", "fraction_windows_above_threshold", "n_windows", "n_skipped",
          "tail_window", "uncovered_end_samples")
# with trust checks: the raw probability, what the number stands on, the rhythm cross-check
AF_TRUST_ROW = ("recording_af_prob_raw", "temperature", "headline", "n_reliable", "n_unreliable",
                "unreliable_reasons", "ood_available", "rhythm_heart_rate_bpm", "rhythm_cv",
                "rhythm_cosen", "rhythm_verdict", "disagreement")


def predict_af(model: GPT, rec: Recording, mod: Modality, mode: Mapping[str, Any],
               trust: TrustContext | None = None) -> RecordingPrediction:
    """``screen_af`` of one recording: a row per window, the recording mean and burden (with
    ``trust``: over the reliable windows, beside the rhythm cross-check)."""
    res = screen_af(model, rec.signal, rec.sample_rate, mod, stride=int(mode["stride"]),
                    threshold=float(mode["threshold"]), batch_size=int(mode["batch_size"]),
                    tail=str(mode["tail"]), trust=trust)
    summary = res.summary()
    row = {key: summary[key] for key in (*AF_ROW, *AF_TRUST_ROW) if key in summary}
    items = []
    for w in res.window_rows():
        skipped = w.pop("skipped", None)
        items.append({**w, "status": f"skipped: {skipped}" if skipped else "ok",
                      "overlaps_previous": int(w["overlaps_previous"])})
    return RecordingPrediction(row, items)


def predict_beats(model: GPT, rec: Recording, mod: Modality, mode: Mapping[str, Any],
                  trust: TrustContext | None = None) -> RecordingPrediction:
    """``detect_beats`` of one recording: a row per beat, the count, quality and heart rate."""
    beats = detect_beats(model, rec.signal, rec.sample_rate, mod, tail=str(mode["tail"]),
                         shift=int(mode["shift"]), batch_size=int(mode["batch_size"]),
                         chunk_size=max(1, int(float(mode["chunk_seconds"]) * mod.sample_rate)))
    summary = beats_summary(beats)
    rate = summary["heart_rate"]
    row = {"n_beats": summary["n_beats"], "median_confidence": summary["median_confidence"],
           "quality": summary["quality"], "median_bpm": rate["median_bpm"],
           "mean_bpm": rate["mean_bpm"], "n_windows": summary["n_windows"],
           "n_skipped": summary["windows_skipped"]}
    items = [{"beat": i, "sample": p, "input_sample": round(p * rec.sample_rate / beats.sample_rate),
              "time_s": p / beats.sample_rate, "confidence": h, "quality": quality_category(h)}
             for i, (p, h) in enumerate(zip(beats.peaks.tolist(), beats.heights.tolist(),
                                            strict=True))]
    return RecordingPrediction(row, items)


def _windows(rec: Recording, mod: Modality, window: int, mode: Mapping[str, Any]
             ) -> tuple[np.ndarray, list[int], np.ndarray, dict[int, str]]:
    """Window starts at the modality rate, usable window indices, their tokens (U, window)
    and the skipped windows' reasons."""
    x = resample(np.asarray(rec.signal, dtype=np.float64), rec.sample_rate, mod.sample_rate)
    stride = int(mode["stride"]) if mode.get("stride") is not None else window  # back to back
    starts = window_starts(len(x), window, stride, str(mode["tail"]))
    skipped: dict[int, str] = {}
    usable, tokens = [], []
    for i, tok in tokenised_windows(x, starts, window, skipped):
        usable.append(i)
        tokens.append(tok)
    if not usable:
        raise no_usable_window(len(starts), skipped)
    return starts, usable, np.stack(tokens), skipped


def _window_items(starts: np.ndarray, window: int, rate: float, skipped: dict[int, str]
                  ) -> list[dict[str, Any]]:
    return [{"window": i, "start_sample": s, "end_sample": s + window, "start_s": s / rate,
             "status": f"skipped: {skipped[i]}" if i in skipped else "ok"}
            for i, s in enumerate(starts.tolist())]


def predict_loss(model: GPT, rec: Recording, mod: Modality, mode: Mapping[str, Any],
                 trust: TrustContext | None = None) -> RecordingPrediction:
    """Next-token loss of a language model on every window of ``block_size`` samples."""
    window = model.config.block_size
    starts, usable, tokens, skipped = _windows(rec, mod, window, mode)

    def loss(t: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B,) mean over the T-1 targets
        logits = model(t[:, :-1]).float()  # (B, T-1, V)
        ce = F.cross_entropy(logits.transpose(1, 2), t[:, 1:], reduction="none")  # (B, T-1)
        return ce.mean(dim=1)

    losses = batched(model, tokens, int(mode["batch_size"]), loss).astype(np.float64)
    items = _window_items(starts, window, mod.sample_rate, skipped)
    for i, value in zip(usable, losses.tolist(), strict=True):
        items[i]["loss"] = value
    mean = float(losses.mean())
    row = {"mean_loss": mean, "perplexity": float(np.exp(mean)), "n_windows": len(starts),
           "n_skipped": len(skipped)}
    return RecordingPrediction(row, items)


def predict_embed(model: GPT, rec: Recording, mod: Modality, mode: Mapping[str, Any],
                  trust: TrustContext | None = None) -> RecordingPrediction:
    """Pooled final-norm hidden states (``n_embd``) of every ``block_size`` window."""
    pool = str(mode["pool"])
    window = model.config.block_size
    starts, usable, tokens, skipped = _windows(rec, mod, window, mode)

    def embed(t: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, C)
        h = model.hidden(t)  # (B, T, C)
        return h.mean(dim=1) if pool == "mean" else h[:, -1]

    vectors = batched(model, tokens, int(mode["batch_size"]), embed).astype(np.float32)
    items = _window_items(starts, window, mod.sample_rate, skipped)
    for row_index, i in enumerate(usable):
        items[i]["embedding_row"] = row_index  # within this recording; the writer offsets it
    row = {"n_windows": len(starts), "n_skipped": len(skipped), "n_embedded": len(usable),
           "embedding_dim": int(vectors.shape[1])}
    return RecordingPrediction(row, items, vectors)


def predict_head(model: AppliedHead, rec: Recording, mod: Modality, mode: Mapping[str, Any],
                 trust: TrustContext | None = None) -> RecordingPrediction:
    """A fine-tuned head's outputs in its labels' terms on every ``block_size`` window (with
    ``trust``: each window's reliability, and the recording's numbers over the reliable ones)."""
    if model.reading is None:
        raise ValueError("mode=head needs an AppliedHead with its reading")
    starts, usable, tokens, skipped = _windows(rec, mod, model.block_size, mode)
    verdict = None
    if trust is not None:
        x = resample(np.asarray(rec.signal, dtype=np.float64), rec.sample_rate, mod.sample_rate)
        scored = np.zeros(len(starts), dtype=bool)
        scored[usable] = True
        ood = None
        if trust.ood is not None:
            ood = np.full(len(starts), np.nan)
            ood[usable] = trust.ood(tokens)
        verdict = assess_windows(x, starts, model.block_size, mod.sample_rate, mod.name, scored,
                                 trust.settings, ood, trust.ood_threshold)
    row, items = head_rows(model, model.reading, starts, usable, tokens, skipped,
                           mod.sample_rate, int(mode["batch_size"]), verdict,
                           trust.calibrated_classes if trust is not None else None)
    return RecordingPrediction(row, items)


def default_mode(out_features: int | None, task: str, head: Mapping[str, Any] | None) -> str:
    """The mode of what a checkpoint is: ``loss`` for a pre-trained model, ``af``/``beats``
    for a released-style binary AF or beat model (a binary classify head (any pooling),
    a binary tag head at every position), ``head`` for every other fine-tune."""
    if out_features is None:
        return "loss"
    if head is None:  # released fine-tunes and files without a head: as their task says
        return "beats" if task == "beats" else "af"
    if task != "beats" and misread_by_tools(head, per_position=False) is None:
        return "af"
    if task != "af" and misread_by_tools(head, per_position=True) is None:
        return "beats"
    return "head"


PREDICTORS: dict[str, Callable[[GPT, Recording, Modality, Mapping[str, Any],
                                TrustContext | None], RecordingPrediction]] = {
    "af": predict_af, "beats": predict_beats, "loss": predict_loss, "embed": predict_embed,
    "head": predict_head}  # type: ignore[dict-item]  (head: an AppliedHead, not a GPT)


def check_mode(mode: Mapping[str, Any], block_size: int) -> None:
    """Refuse settings that would fail (or mean something else) on every recording, naming the
    key: ``InputError("mode.<key>", problem)``."""
    name = str(mode.get("name"))
    if name not in PREDICTORS:
        raise InputError("mode", f"must be one of {MODES}, got {name!r}")

    def bad(key: str, problem: str) -> InputError:
        return InputError(f"mode.{key}", f"{problem}, got {mode.get(key)!r}")

    def positive_int(key: str, optional: bool = False) -> None:
        value = mode.get(key)
        if value is None and optional:
            return
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise bad(key, "must be a positive integer" + (" or null" if optional else ""))

    tails = beat_detection.TAILS if name == "beats" else af_screening.TAILS
    if mode.get("tail") not in tails:
        raise bad("tail", f"must be one of {tails}")
    positive_int("batch_size")
    if name == "beats":
        positive_int("shift")
        if mode["shift"] > block_size:
            raise bad("shift", f"must be at most the model's window of {block_size} samples")
        seconds = mode.get("chunk_seconds")
        if not isinstance(seconds, (int, float)) or not seconds > 0:
            raise bad("chunk_seconds", "must be a positive number of seconds")
    else:
        positive_int("stride", optional=name != "af")
    if name == "af":
        threshold = mode.get("threshold")
        if not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
            raise bad("threshold", "must be a probability in [0, 1]")
    if name == "head":
        ratio = mode.get("collapse_sd_ratio")
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
            raise bad("collapse_sd_ratio", "must be a number in [0, 1)")
    if name == "embed" and mode.get("pool") not in POOLS:
        raise bad("pool", f"must be one of {POOLS}")


def predict_recording(model: GPT, rec: Recording, mod: Modality, mode: Mapping[str, Any],
                      trust: TrustContext | None = None) -> RecordingPrediction:
    """The prediction of mode ``mode["name"]`` for one recording (``trust``: the checks of
    each window's reliability, for ``af`` and ``head``).

    Raises:
        ValueError: unknown mode, a recording too short for one window or with no usable one.
    """
    name = str(mode["name"])
    if name not in PREDICTORS:
        raise ValueError(f"mode must be one of {MODES}, got {name!r}")
    return PREDICTORS[name](model, rec, mod, mode, trust)
