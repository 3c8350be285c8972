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
"""

from __future__ import annotations

from typing import Any

import numpy as np

from heartgpt.heads.applied import AppliedHead, HeadReading
from heartgpt.inference.loading import batched


def output_columns(reading: HeadReading, values: np.ndarray) -> dict[str, Any]:
    """The columns of one output row (``values``: (K,)) in the labels' terms."""
    if reading.kind == "class":
        row: dict[str, Any] = {f"prob_{c}": float(v)
                               for c, v in zip(reading.columns, values.tolist(), strict=True)}
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
              tokens: np.ndarray, skipped: dict[int, str], rate: float, batch_size: int
              ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One recording's row and its items (a window, or a tagged position, each) from its
    windows (``starts`` at the modality ``rate``; ``tokens`` (U, T) of the ``usable`` ones)."""
    window = model.block_size
    outputs = batched(model, tokens, batch_size).astype(np.float64)  # (U, K) | (U, P, K)
    by_window = dict(zip(usable, outputs, strict=True))
    items: list[dict[str, Any]] = []
    for i, s in enumerate(starts.tolist()):
        base = {"window": i, "start_sample": s, "end_sample": s + window, "start_s": s / rate,
                "end_s": (s + window) / rate,
                "status": f"skipped: {skipped[i]}" if i in skipped else "ok"}
        out = by_window.get(i)
        if reading.level == "sequence":
            items.append({**base, **({} if out is None else output_columns(reading, out))})
        elif out is None:
            items.append(base)
        else:
            for p, values in enumerate(out):
                first = s + p * reading.stride
                items.append({**base, "position": p, "time_s": first / rate,
                              "position_end_s": (first + reading.stride) / rate,
                              **output_columns(reading, values)})
    row = {"n_windows": len(starts), "n_skipped": len(skipped),
           **summarise(reading, outputs), "names_from": reading.names_from}
    return row, items
