"""Risk-coverage of an evaluation (issue 29): the task metric over the windows kept when the
least reliable are dropped first, the evidence that the trust flags help.

Each window ``eval`` scored gets an *unreliability* (:func:`unreliability`, higher: less
reliable) from what the tools judge a window by (:mod:`heartgpt.inference.window_trust`):

- its signal quality (:func:`heartgpt.data.signal_quality.window_quality`), judged on the
  window's tokens as a signal at the modality's rate: a token is the window min-max scaled to
  0..100 and rounded, and every quality index but the amplitude one is unchanged by an affine
  scaling (the amplitude check, against the recording's other windows, is not judged: the
  scale is gone); each failed check adds 1;
- when the checkpoint holds an OOD reference (``python -m heartgpt.calibrate``), its distance
  from the training windows (:func:`heartgpt.model.trust.ood_scores`): 1 more past the
  reference's threshold, and its percentile among held-out windows (0..1) to order the rest.

Windows are dropped in decreasing unreliability (ties in an order drawn from ``seed``); at each
coverage of ``risk_coverage.coverages`` (``conf/eval.yaml``) the metric is computed over the
kept windows (binary: AUROC and accuracy at 0.5; multiclass: accuracy and macro AUROC;
values: MAE; per-position heads: accuracy or MAE over the positions), beside the same metric
with the windows dropped in random order (the mean over ``random_orders`` orders): a flag that
helps beats random. Writes ``eval_risk_coverage.csv`` and ``eval_risk_coverage.png``. With more
scored windows than ``max_windows``, a random sample of that many (``seed``) is judged.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from heartgpt.data.signal_quality import TrustSettings, window_quality
from heartgpt.errors import ConfigError

log = logging.getLogger(__name__)
RISK_COVERAGE_CSV = "eval_risk_coverage.csv"
RISK_COVERAGE_PNG = "eval_risk_coverage.png"


@dataclass(frozen=True)
class Reliability:
    """Every scored window's unreliability and what it is made of (rows: global shard rows)."""

    rows: np.ndarray  # (N,) int
    quality_failures: np.ndarray  # (N,) failed quality checks (0: reliable); -1: not judged
    # (quality off, or neurokit2 could not judge the window, e.g. one shorter than a beat)
    quality_reasons: list[str]
    ood: np.ndarray | None  # (N,) distances; None: no OOD reference in the checkpoint
    ood_percentile: np.ndarray | None  # (N,) 0..1 among held-out in-distribution windows
    ood_threshold: float | None

    @property
    def unreliability(self) -> np.ndarray:
        """(N,) failed quality checks + 1 past the OOD threshold: the flags the tools use, and
        only them (the OOD percentile of unflagged windows is not used to order them: on the
        demo PPG shards it tracks the class, so dropping by it removed one class first and
        AUROC fell 0.86 -> 0.71 at 50 %; ties are broken at random by the caller)."""
        score = np.clip(self.quality_failures, 0, None).astype(np.float64)
        if self.ood is not None and self.ood_threshold is not None:
            score += self.ood > float(self.ood_threshold)
        return score

    @property
    def flagged(self) -> np.ndarray:
        """(N,) bool: what the tools would call unreliable (a quality failure or OOD)."""
        out = self.quality_failures > 0
        if self.ood is not None and self.ood_threshold is not None:
            out = out | (self.ood > self.ood_threshold)
        return out

    def describe(self) -> str:
        """Which scores order the windows: 'signal quality + OOD distance' and so on."""
        parts = (["signal quality"] if (self.quality_failures >= 0).any() else []) + \
            (["OOD distance"] if self.ood is not None else [])
        return " + ".join(parts) or "none"


def judge_windows(batches: Iterable[Mapping[str, Any]], modality: str, rate: float,
                  settings: TrustSettings | None,
                  ood: Callable[[Any], tuple[np.ndarray, np.ndarray]] | None,
                  ood_threshold: float | None, only: set[int] | None = None) -> Reliability:
    """The :class:`Reliability` of the windows of ``batches`` (dicts with ``tokens`` (B, T)
    and ``row`` (B,)).

    Args:
        settings: the quality thresholds; None: quality not judged.
        ood: tokens (B, T) -> ((B,) distances, (B,) percentiles 0..1); None: no reference.
        only: judge only the windows of these rows (None: every window).
    """
    rows, failures, reasons, dist, pct = [], [], [], [], []
    for batch in batches:
        tokens, batch_rows = batch["tokens"], [int(r) for r in batch["row"]]
        if only is not None:
            pick = [i for i, r in enumerate(batch_rows) if r in only]
            if not pick:
                continue
            tokens, batch_rows = tokens[pick], [batch_rows[i] for i in pick]
        rows.extend(batch_rows)
        signal = np.asarray(tokens, dtype=np.float64)
        for x in signal:
            if settings is None:
                failures.append(-1)
                reasons.append("")
                continue
            try:
                verdict = window_quality(x, rate, modality, settings)
            except (TypeError, ValueError, IndexError) as e:  # neurokit2 on too short a window
                failures.append(-1)
                reasons.append(f"not judged: {e}")
                continue
            parts = [p for p in verdict.reason.split("; ") if p]
            failures.append(len(parts))
            reasons.append(verdict.reason)
        if ood is not None:
            d, p = ood(tokens)
            dist.append(np.asarray(d, dtype=np.float64))
            pct.append(np.asarray(p, dtype=np.float64))
    return Reliability(np.asarray(rows, dtype=np.int64), np.asarray(failures, dtype=np.int64),
                       reasons, np.concatenate(dist) if ood is not None else None,
                       np.concatenate(pct) if ood is not None else None, ood_threshold)


# --------------------------------------------------------------------------------- metrics
def _auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores)) if len(np.unique(labels)) == 2 else math.nan


def _macro_auroc(labels: np.ndarray, probs: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if len(np.unique(labels)) != probs.shape[1]:
        return math.nan  # a class missing among the kept windows
    if probs.shape[1] == 2:
        return float(roc_auc_score(labels, probs[:, 1]))
    return float(roc_auc_score(labels, probs, multi_class="ovr", average="macro"))


@dataclass(frozen=True)
class WindowMetrics:
    """What the task's prediction rows allow: ``metrics(idx)`` -> {name: value} over the rows
    ``idx``; ``higher_is_better[name]``; ``main``: the metric the figure draws."""

    names: tuple[str, ...]
    higher_is_better: dict[str, bool]
    main: str
    compute: Callable[[np.ndarray], dict[str, float]]


def window_metrics(rows: Sequence[Mapping[str, str]]) -> WindowMetrics | None:
    """The metrics of ``eval_predictions.csv``'s rows (None: rows the module cannot judge
    per window, e.g. beat positions)."""
    if not rows:
        return None
    keys = set(rows[0])
    col = lambda k: np.array([float(r[k]) for r in rows])  # noqa: E731
    if {"label", "prob"} <= keys:  # binary, one label per window
        y, p = col("label").astype(int), col("prob")
        return WindowMetrics(("auroc", "acc"), {"auroc": True, "acc": True}, "auroc", lambda i: {
            "auroc": _auroc(y[i], p[i]), "acc": float(np.mean((p[i] >= 0.5) == y[i]))})
    probs = sorted((k for k in keys if k.startswith("prob_")), key=lambda k: int(k[5:]))
    if {"label", "predicted"} <= keys and probs:  # multiclass
        y, pred = col("label").astype(int), col("predicted").astype(int)
        pk = np.stack([col(k) for k in probs], axis=1)
        return WindowMetrics(("acc", "auroc"), {"acc": True, "auroc": True}, "acc", lambda i: {
            "acc": float(np.mean(pred[i] == y[i])), "auroc": _macro_auroc(y[i], pk[i])})
    predicted = sorted(k for k in keys if k.startswith("predicted_"))
    if predicted:  # regression, values per window
        err = np.stack([np.abs(col(k) - col(k.removeprefix("predicted_"))) for k in predicted], 1)
        return WindowMetrics(("mae",), {"mae": False}, "mae",
                             lambda i: {"mae": float(np.nanmean(err[i]))})
    if {"positions", "correct"} <= keys:  # a class per position
        n, c = col("positions"), col("correct")
        return WindowMetrics(("acc",), {"acc": True}, "acc",
                             lambda i: {"acc": float(c[i].sum() / max(n[i].sum(), 1))})
    if {"positions", "mae"} <= keys:  # a value per position
        n, m = col("positions"), col("mae")
        ok = np.isfinite(m)
        return WindowMetrics(("mae",), {"mae": False}, "mae", lambda i: {
            "mae": float((m[i][ok[i]] * n[i][ok[i]]).sum() / max(n[i][ok[i]].sum(), 1))})
    return None


# --------------------------------------------------------------------------------- the curve
def drop_order(unreliability: np.ndarray, seed: int) -> np.ndarray:
    """Indices from the most reliable to the least (ties in an order drawn from ``seed``)."""
    tiebreak = np.random.default_rng(seed).permutation(len(unreliability))
    return np.lexsort((tiebreak, unreliability))


def risk_coverage_table(metrics: WindowMetrics, unreliability: np.ndarray,
                        coverages: Sequence[float], random_orders: int, seed: int
                        ) -> list[dict[str, Any]]:
    """A row per coverage: ``coverage``, ``windows`` kept, each metric over the most reliable
    windows, and ``<metric>_random``: its mean over ``random_orders`` random drop orders."""
    n = len(unreliability)
    order = drop_order(unreliability, seed)
    rng = np.random.default_rng(seed + 1)
    randoms = [rng.permutation(n) for _ in range(random_orders)]
    table = []
    for c in coverages:
        keep = max(1, math.ceil(float(c) * n - 1e-9))
        row: dict[str, Any] = {"coverage": float(c), "windows": keep,
                               "max_unreliability": float(unreliability[order[keep - 1]])}
        row.update(metrics.compute(order[:keep]))
        for name in metrics.names:
            vals = [metrics.compute(r[:keep])[name] for r in randoms]
            row[f"{name}_random"] = float(np.nanmean(vals)) if np.isfinite(vals).any() \
                else math.nan
        table.append(row)
    return table


def check_settings(rc: Mapping[str, Any]) -> tuple[list[float], int]:
    """``risk_coverage.coverages`` (each in (0, 1]), ``random_orders`` (>= 0) and
    ``max_windows`` (>= 1 or None), checked; returns the coverages (descending) and orders."""
    coverages = [float(c) for c in rc["coverages"]]
    if not coverages or not all(0 < c <= 1 for c in coverages):
        raise ConfigError("risk_coverage.coverages", f"must be fractions in (0, 1], "
                          f"got {coverages}")
    if rc.get("max_windows") is not None and int(rc["max_windows"]) < 1:
        raise ConfigError("risk_coverage.max_windows", "must be >= 1 or null (all windows)")
    if int(rc["random_orders"]) < 0:
        raise ConfigError("risk_coverage.random_orders", "must be >= 0")
    return sorted(coverages, reverse=True), int(rc["random_orders"])


def write_table(path: Path, table: list[dict[str, Any]]) -> Path:
    """``table`` as a CSV (NaN: empty)."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]))
        writer.writeheader()
        for row in table:
            writer.writerow({k: ("" if isinstance(v, float) and not math.isfinite(v) else v)
                             for k, v in row.items()})
    return path


def plot_table(table: list[dict[str, Any]], metric: str, higher_is_better: bool, order: str,
               title: str):
    """The metric against coverage: by unreliability and in random order."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    cov = [100 * r["coverage"] for r in table]
    ax.plot(cov, [r[metric] for r in table], "o-", color="C0",
            label=f"least reliable dropped first ({order})")
    if f"{metric}_random" in table[0]:
        ax.plot(cov, [r[f"{metric}_random"] for r in table], "s--", color="0.5",
                label="dropped in random order")
    ax.invert_xaxis()
    ax.set_xlabel("coverage: windows kept (%)")
    ax.set_ylabel(f"{metric} ({'higher' if higher_is_better else 'lower'} is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    return fig


def risk_coverage_files(out: Path, reliability: Reliability,
                        rows: Sequence[Mapping[str, str]], rc: Mapping[str, Any], seed: int,
                        title: str) -> dict[str, Any] | None:
    """Write ``eval_risk_coverage.csv`` / ``.png`` of the prediction ``rows`` ordered by
    ``reliability`` (``rc``: ``conf/eval.yaml: risk_coverage``); return what
    ``eval_metrics.json`` keeps (None: the rows cannot be judged per window)."""
    from heartgpt.inference.plots import save_figure

    metrics_of = window_metrics(rows)
    if metrics_of is None:
        log.info("risk-coverage: the predictions have no per-window metric; skipped")
        return None
    coverages, random_orders = check_settings(rc)
    by_row = {int(r): i for i, r in enumerate(reliability.rows)}
    missing = [int(r["row"]) for r in rows if int(r["row"]) not in by_row]
    if missing:
        raise ValueError(f"risk-coverage: {len(missing)} predicted row(s) were not judged "
                         f"(first: row {missing[0]})")
    idx = np.array([by_row[int(r["row"])] for r in rows])
    score = reliability.unreliability[idx]
    table = risk_coverage_table(metrics_of, score, coverages, random_orders, seed)
    write_table(out / RISK_COVERAGE_CSV, table)
    order = reliability.describe()
    fig = plot_table(table, metrics_of.main, metrics_of.higher_is_better[metrics_of.main],
                     order, title)
    save_figure(fig, out / RISK_COVERAGE_PNG)
    flagged = reliability.flagged[idx]
    return {"order": order, "metric": metrics_of.main, "windows": len(rows),
            "flagged": int(flagged.sum()),
            "quality_flagged": int((reliability.quality_failures[idx] > 0).sum()),
            "quality_not_judged": int((reliability.quality_failures[idx] < 0).sum()),
            "ood_flagged": (int((reliability.ood[idx] > reliability.ood_threshold).sum())
                            if reliability.ood is not None and reliability.ood_threshold
                            is not None else None),
            "table": [{k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                       for k, v in row.items()} for row in table]}


def _ood_of(loaded: Any, device: str) -> tuple[Callable | None, float | None]:
    """tokens -> (distances, percentiles 0..1) of ``loaded``'s OOD reference (None: none)."""
    import torch

    from heartgpt.model.trust import ood_percentiles, ood_scores, task_head_of, window_outputs

    ref = loaded.ood_reference
    if ref is None or not hasattr(loaded.model, "hidden"):
        return None, None
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    loaded.model.to(device).eval()
    head = task_head_of(loaded)

    def ood(tokens: Any) -> tuple[np.ndarray, np.ndarray]:
        _, pooled = window_outputs(loaded, torch.as_tensor(tokens, dtype=torch.long), head)
        d = ood_scores(loaded, pooled=pooled)
        return d.double().numpy(), ood_percentiles(loaded, d).double().numpy() / 100.0

    return ood, float(ref.threshold)


def add_risk_coverage(report: dict[str, Any], cfg: Any, loaded: Any) -> None:
    """Judge every window ``eval`` scored (a fresh DataModule of ``cfg.data``, one process,
    the same windows in the same order), write the risk-coverage files beside
    ``eval_predictions.csv`` and put their summary in ``report["risk_coverage"]``
    (``cfg.risk_coverage``; absent or ``enabled: false``: nothing)."""
    import time

    from hydra.utils import instantiate

    from heartgpt.data.signal_quality import load_trust
    from heartgpt.training.result_files import EVAL_PREDICTIONS, read_predictions

    rc = cfg.get("risk_coverage")
    out = Path(cfg.paths.output_dir)
    if not rc or not rc.get("enabled") or not (out / EVAL_PREDICTIONS).is_file():
        return
    rows = read_predictions(out / EVAL_PREDICTIONS)
    if window_metrics(rows) is None:
        log.info("risk-coverage: the predictions have no per-window metric; skipped")
        return
    check_settings(rc)
    only = None
    cap = rc.get("max_windows")
    if cap is not None and len(rows) > int(cap):  # a sample: quality costs ~50 ms a window
        pick = np.sort(np.random.default_rng(int(cfg.seed)).choice(len(rows), int(cap), False))
        rows = [rows[i] for i in pick]
        only = {int(r["row"]) for r in rows}
        log.info("risk-coverage on a sample of %d of the %d windows (risk_coverage.max_windows)",
                 len(rows), report["windows"])
    settings = load_trust(str(rc.trust)) if rc.quality else None
    ood, threshold = _ood_of(loaded, str(rc.device))
    datamodule = instantiate(cfg.data, _convert_="all", num_workers=0, persistent_workers=False)
    datamodule.setup("test")
    t0 = time.perf_counter()
    reliability = judge_windows(datamodule.test_dataloader(), cfg.modality.name,
                                float(cfg.modality.sample_rate), settings, ood, threshold,
                                only)
    seconds = time.perf_counter() - t0
    log.info("risk-coverage: %d windows judged by %s in %.1f s (%.1f ms/window)",
             len(reliability.rows), reliability.describe(), seconds,
             1000 * seconds / max(len(reliability.rows), 1))
    summary = risk_coverage_files(out, reliability, rows, rc, int(cfg.seed),
                                  f"risk-coverage: {Path(cfg.checkpoint).name}")
    if summary is not None:
        summary["ms_per_window"] = round(1000 * seconds / max(len(reliability.rows), 1), 2)
        summary["sampled_from"] = report["windows"] if only is not None else None
        report["risk_coverage"] = summary
        report["files"] += [RISK_COVERAGE_CSV, RISK_COVERAGE_PNG]
