"""Does a regression beat always predicting the training split's mean?

A regression objective (:class:`~heartgpt.heads.objectives.RegressionObjective`) logs, beside
its ``mae`` / ``rmse`` (``mae_<name>`` per label column when there are several), the
``baseline_mae`` / ``baseline_rmse`` of predicting the training split's mean for every value:
what a model collapsed to the mean scores (a blood-pressure probe at ~127 mmHg for every input).
Here those numbers become the verdict that ``test_metrics.json``, ``eval_metrics.json`` and the
cross-validation summary carry as :data:`BEATS_MEAN_BASELINE`, with a one-line warning when it
is false, and are pooled over the folds of a cross-validation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from heartgpt.heads.objectives import BASELINE

BEATS_MEAN_BASELINE = "beats_mean_baseline"  # true: every column's MAE below its baseline's
_POOLED = ("mae", "rmse", f"{BASELINE}mae", f"{BASELINE}rmse")


def baseline_pairs(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """``{'mae' | 'mae_<name>': (the model's MAE, the baseline's)}`` of a regression's metrics
    (keys ``<prefix>mae``, ``<prefix>baseline_mae``, ...); ``{}`` for other heads."""
    head = f"{prefix}{BASELINE}"
    pairs = {}
    for key, value in metrics.items():
        if key.startswith(f"{head}mae"):
            column = key.removeprefix(head)  # 'mae' | 'mae_<name>'
            pairs[column] = (metrics.get(prefix + column), value)
    return pairs


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def beats_mean_baseline(pairs: Mapping[str, tuple[Any, Any]]) -> bool | None:
    """Whether every column's MAE is below the baseline's (None: no regression metrics, or a
    column without a single value to score)."""
    if not pairs or not all(_finite(m) and _finite(b) for m, b in pairs.values()):
        return None
    return all(m < b for m, b in pairs.values())


def baseline_warning(pairs: Mapping[str, tuple[Any, Any]]) -> str | None:
    """One line naming the columns whose MAE is not below the baseline's (None: all are)."""
    failing = [(key, m, b) for key, (m, b) in pairs.items() if _finite(m) and _finite(b) and m >= b]
    if not failing:
        return None
    what = "; ".join(f"{'' if key == 'mae' else key.removeprefix('mae_') + ': '}MAE {m:.4g} vs "
                     f"baseline {b:.4g}" for key, m, b in failing)
    return f"the model does not beat predicting the training mean ({what})"


def verdict(metrics: Mapping[str, Any], prefix: str = "") -> tuple[bool | None, str | None]:
    """(:func:`beats_mean_baseline`, :func:`baseline_warning`) of ``metrics``."""
    pairs = baseline_pairs(metrics, prefix)
    return beats_mean_baseline(pairs), baseline_warning(pairs)


def _values_per_column(rows: Sequence[Mapping[str, str]], keys: Sequence[str]) -> dict[str, int] | None:
    """``{'mae' | 'mae_<name>': values scored}`` of one fold's prediction rows: a window's
    ``<name>`` when it has one (sequence regression), else its ``positions`` (value tagging,
    one column only); None when the rows cannot say."""
    if not rows:
        return None
    names = [k.removeprefix("predicted_") for k in rows[0] if k.startswith("predicted_")]
    if names:
        count = {n: sum(math.isfinite(float(r[n])) for r in rows if r[n] != "") for n in names}
        if keys == ["mae"] and len(names) == 1:
            return {"mae": count[names[0]]}
        return {f"mae_{n}": c for n, c in count.items()}
    if "positions" in rows[0] and keys == ["mae"]:
        return {"mae": sum(int(r["positions"]) for r in rows)}
    return None


def pool_folds(folds: Sequence[tuple[Mapping[str, Any], Sequence[Mapping[str, str]]]],
               prefix: str = "test/") -> dict[str, Any] | None:
    """MAE, RMSE and their baselines over every held-out value of a cross-validation, from each
    fold's metrics (each baseline its own fold's training mean) weighted by the values it
    scored, and the verdict; None when the folds are not regressions with baselines.

    ``folds``: ``(metrics, prediction rows)`` per fold; the pooled keys have no ``prefix``."""
    sums: dict[tuple[str, str], list[float]] = {}  # (metric, '' | '_<name>'): [sum, values]
    for metrics, rows in folds:
        pairs = baseline_pairs(metrics, prefix)
        counts = _values_per_column(rows, sorted(pairs)) if pairs else None
        if counts is None or set(counts) != set(pairs):
            return None
        for column, n in counts.items():
            suffix = column.removeprefix("mae")
            for metric in _POOLED:
                value = metrics.get(f"{prefix}{metric}{suffix}")
                if n and not _finite(value):
                    return None
                total = sums.setdefault((metric, suffix), [0.0, 0])
                total[0] += n * (value ** 2 if metric.endswith("rmse") else value) if n else 0.0
                total[1] += n
    if not sums:
        return None
    out: dict[str, Any] = {}
    for (metric, suffix), (total, n) in sums.items():
        mean = total / n if n else float("nan")  # RMSE: the root of the pooled mean square
        out[f"{metric}{suffix}"] = math.sqrt(mean) if metric.endswith("rmse") else mean
    out[BEATS_MEAN_BASELINE] = beats_mean_baseline(baseline_pairs(out))
    return out
