"""``predict mode=head``: any fine-tuned head on every window of a recording, in its labels' terms.

The recording is cut into windows of the model's ``block_size`` as the other window modes cut
it (resampled to the modality rate, ``stride`` apart, ``tail`` as ``af``/``loss``), and the
:class:`~heartgpt.heads.applied.AppliedHead` gives each window's outputs:

* classes: a ``prob_<class>`` column per class (named by the shards' label schema) and the
  ``predicted`` class; the recording's ``fraction_<class>`` (of windows, or of tagged
  positions, predicted as that class) and ``mean_prob_<class>``.
* values: a column per label name (its units are the labels', e.g. ``hr_bpm``); the
  recording's ``mean_<name>``, ``median_<name>`` and ``iqr_<name>``.
* a tag head (one output every ``stride`` tokens): a row per position of each window, with
  ``position`` and its ``time_s`` (the first sample it describes) and ``end_s``.

Over a whole run, :func:`values_against_training` sets a value head's predictions beside the
training split's mean and spread: a regressor collapsed to that mean (the same value for every
input) shows at a glance.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from heartgpt.heads.applied import AppliedHead, HeadReading
from heartgpt.heads.objectives import RegressionObjective
from heartgpt.inference.loading import batched
from heartgpt.inference.window_trust import WindowTrust


def output_columns(reading: HeadReading, values: np.ndarray,
                   raw: np.ndarray | None = None) -> dict[str, Any]:
    """The columns of one output row (``values``: (K,)) in the labels' terms (``raw``: the
    uncalibrated probabilities of a calibrated class head, written beside them)."""
    if reading.kind == "class":
        row: dict[str, Any] = {f"prob_{c}": float(v)
                               for c, v in zip(reading.columns, values.tolist(), strict=True)}
        if raw is not None:
            row.update({f"prob_{c}_raw": float(v)
                        for c, v in zip(reading.columns, raw.tolist(), strict=True)})
        row["predicted"] = reading.columns[int(np.argmax(values))]
        return row
    return {name: float(v) for name, v in zip(reading.columns, values.tolist(), strict=True)}


def summarise(reading: HeadReading, outputs: np.ndarray) -> dict[str, Any]:
    """The recording's numbers from its outputs (N, K) (windows, or tagged positions):
    class fractions and mean probabilities, or mean, median and IQR of each value."""
    outputs = np.asarray(outputs, dtype=np.float64).reshape(-1, len(reading.columns))
    row: dict[str, Any] = {}
    if reading.kind == "class":
        predicted = outputs.argmax(axis=1)
        for k, c in enumerate(reading.columns):
            row[f"fraction_{c}"] = float(np.mean(predicted == k))
        for k, c in enumerate(reading.columns):
            row[f"mean_prob_{c}"] = float(outputs[:, k].mean())
        row["predicted"] = reading.columns[int(np.argmax(np.bincount(predicted,
                                                                       minlength=outputs.shape[1])))]
        return row
    for k, name in enumerate(reading.columns):
        q1, median, q3 = np.percentile(outputs[:, k], [25, 50, 75])
        row[f"mean_{name}"] = float(outputs[:, k].mean())
        row[f"median_{name}"] = float(median)
        row[f"iqr_{name}"] = float(q3 - q1)
    return row


def head_rows(model: AppliedHead, reading: HeadReading, starts: np.ndarray, usable: list[int],
              tokens: np.ndarray, skipped: dict[int, str], rate: float, batch_size: int,
              trust: WindowTrust | None = None,
              calibrate: Callable[[np.ndarray], np.ndarray | None] | None = None
              ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One recording's row and its items (a window, or a tagged position, each) from its
    windows (``starts`` at the modality ``rate``; ``tokens`` (U, T) of the ``usable`` ones).
    With ``trust`` each item says whether its window is reliable, and the recording's numbers
    stand on the reliable windows (on all of them when none is, which the row says).
    ``calibrate`` rescales a class head's probabilities by its stored temperature (None: none
    stored); the raw ones are written beside them."""
    window = model.block_size
    outputs = batched(model, tokens, batch_size).astype(np.float64)  # (U, K) | (U, P, K)
    raw = None
    if calibrate is not None and reading.kind == "class":
        scaled = calibrate(outputs)
        if scaled is not None:
            raw, outputs = outputs, scaled
    by_window = dict(zip(usable, outputs, strict=True))
    raw_by_window = dict(zip(usable, raw, strict=True)) if raw is not None else {}
    items: list[dict[str, Any]] = []
    kept = outputs
    trust_row: dict[str, Any] = {}
    if trust is not None:
        reliable = trust.reliable[usable]
        if reliable.any():
            kept = outputs[reliable]
        trust_row = {"n_reliable": int(trust.reliable.sum()),
                     "n_unreliable": int(trust.unreliable.sum()),
                     "unreliable_reasons": "; ".join(f"{r}: {n}" for r, n in
                                                     trust.reason_counts().items()),
                     "ood_available": trust.ood_threshold is not None}
    for i, s in enumerate(starts.tolist()):
        base = {"window": i, "start_sample": s, "end_sample": s + window, "start_s": s / rate,
                "end_s": (s + window) / rate,
                "status": f"skipped: {skipped[i]}" if i in skipped else "ok"}
        if trust is not None:
            base.update(trust.columns(i))
        out, out_raw = by_window.get(i), raw_by_window.get(i)
        if reading.level == "sequence":
            items.append({**base, **({} if out is None else output_columns(reading, out,
                                                                          out_raw))})
        elif out is None:
            items.append(base)
        else:
            for p, values in enumerate(out):
                first = s + p * reading.stride
                items.append({**base, "position": p, "time_s": first / rate,
                              "position_end_s": (first + reading.stride) / rate,
                              **output_columns(reading, values,
                                               None if out_raw is None else out_raw[p])})
    row = {"n_windows": len(starts), "n_skipped": len(skipped),
           **summarise(reading, kept), **trust_row, "names_from": reading.names_from}
    return row, items



def values_against_training(model: AppliedHead, items: list[dict[str, Any]],
                            collapse_sd_ratio: float) -> dict[str, dict[str, Any]]:
    """Per value column of a regression head: the mean and SD of every value predicted in
    ``items`` (a run's window or position rows) beside the training split's mean and SD (the
    head's standardisation, i.e. what always predicting the mean gives), and ``collapsed``:
    whether the predictions' SD is below ``collapse_sd_ratio`` times the training SD. Empty for
    a class head or a head that does not hold its training statistics (an ONNX export)."""
    objective = model.task_head.objective
    reading = model.reading
    if reading is None or reading.kind != "value" or not isinstance(objective,
                                                                    RegressionObjective):
        return {}
    out: dict[str, dict[str, Any]] = {}
    for k, name in enumerate(reading.columns):
        values = np.array([float(i[name]) for i in items if i.get(name) is not None])
        train_mean, train_sd = float(objective.mean[k]), float(objective.std[k])
        sd = float(values.std()) if len(values) else float("nan")
        out[name] = {"n": len(values), "mean": float(values.mean()) if len(values) else None,
                     "sd": sd if len(values) else None, "training_mean": train_mean,
                     "training_sd": train_sd,
                     "collapsed": bool(len(values) > 1 and sd < collapse_sd_ratio * train_sd)}
    return out
