"""The trust state of a fine-tune: temperature scaling of its logits and the out-of-distribution
reference of its pooled hidden states (issue 29).

:class:`Calibration` is one temperature ``T`` fitted on labelled windows (a validation split)
by minimising the negative log-likelihood of ``logits / T`` (LBFGS on ``log T``): a binary head
reads ``sigmoid(logit / T)``, a multiclass one ``softmax(logits / T)``; regressions have none.
Dividing by one positive number keeps every ranking (AUROC, the predicted class) as it was.

:class:`OodReference` is the mean and the shrunk covariance (its inverse kept) of the pooled
hidden states (:func:`pooled_hidden`: the same pooling the head reads) of training windows,
and the quantiles of their Mahalanobis distance on held-out windows: a window's distance reads
as a percentile of those, and above the ``threshold_level`` quantile (0.99) as out of
distribution. Both are plain values and tensors (``to_dict``) so a checkpoint stores them under
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional as F

from heartgpt.heads.reductions import AttentionPooling, LastPosition, Reduction

CALIBRATION_KINDS = ("binary", "multiclass")


# ------------------------------------------------------------------------------ temperature


def scaled_probabilities(logits: torch.Tensor, temperature: float, kind: str) -> torch.Tensor:
    """Probabilities of ``logits / temperature``: binary (..., 1) or (...,) logits give the
    positive class's probability (...,), multiclass (..., K) give (..., K)."""
    if kind == "binary":
        z = logits[..., 0] if logits.ndim > 1 and logits.shape[-1] == 1 else logits
        return torch.sigmoid(z.float() / temperature)
    if kind == "multiclass":
        return torch.softmax(logits.float() / temperature, dim=-1)
    raise ValueError(f"calibration kind must be one of {CALIBRATION_KINDS}, got {kind!r}")


def logits_of(probabilities: torch.Tensor, kind: str) -> torch.Tensor:
    """Logits that give ``probabilities`` back (binary: ``logit(p)``; multiclass: ``log p``,
    which softmax reads as the logits up to a shift): to rescale stored probabilities."""
    p = probabilities.double()
    if kind == "binary":
        p = p.clamp(1e-12, 1 - 1e-12)
        return torch.log(p) - torch.log1p(-p)
    return torch.log(p.clamp_min(1e-12))


def nll(logits: torch.Tensor, labels: torch.Tensor, kind: str, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under ``logits / temperature``."""
    return float(_nll(logits.double(), labels, kind, torch.tensor(float(temperature),
                                                                   dtype=torch.float64)))


def _nll(logits: torch.Tensor, labels: torch.Tensor, kind: str, t: torch.Tensor) -> torch.Tensor:
    if kind == "binary":
        z = logits[..., 0] if logits.ndim > 1 else logits
        return F.binary_cross_entropy_with_logits(z / t, labels.to(z.dtype))
    return F.cross_entropy(logits / t, labels.long())


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, kind: str,
                    max_iter: int = 100) -> float:
    """The temperature ``T > 0`` minimising the NLL of ``labels`` under ``logits / T``.

    Args:
        logits: (N,) or (N, 1) binary logits, or (N, K) multiclass logits.
        labels: (N,) 0/1 or class indices.
        kind: 'binary' | 'multiclass'.
        max_iter: LBFGS iterations on ``log T`` (from T = 1).

    Raises:
        ValueError: no windows, or logits and labels of different lengths.
    """
    if kind not in CALIBRATION_KINDS:
        raise ValueError(f"calibration kind must be one of {CALIBRATION_KINDS}, got {kind!r}")
    logits, labels = logits.detach().double(), labels.detach().reshape(-1)
    if logits.shape[0] == 0 or logits.shape[0] != labels.shape[0]:
        raise ValueError(f"temperature scaling needs logits and labels of one length > 0, got "
                         f"{tuple(logits.shape)} and {tuple(labels.shape)}")
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = _nll(logits, labels, kind, log_t.clamp(-7.0, 7.0).exp())
        loss.backward()
        return loss

    optimiser.step(closure)
    return float(log_t.detach().clamp(-7.0, 7.0).exp())


@dataclass(frozen=True)
class Calibration:
    """A fitted temperature and where it comes from.

    Attributes:
        temperature: divides the logits (> 1: the raw probabilities were over-confident).
        kind: 'binary' | 'multiclass'.
        split: the split of ``shard_dir`` it was fitted on (e.g. 'val').
        windows: how many windows (positions, for a tag head) it was fitted on.
        nll_before / nll_after: their NLL at T = 1 and at ``temperature``.
        shard_dir: the shards it was fitted on.
        source: ``{"path", "sha256"}`` of the checkpoint whose logits it scales, when it was
            fitted post hoc (``python -m heartgpt.calibrate``); None: by the fine-tune itself.
    """

    temperature: float
    kind: str
    split: str
    windows: int
    nll_before: float
    nll_after: float
    shard_dir: str = ""
    source: dict[str, str] | None = None

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Calibrated probabilities of raw ``logits`` (see :func:`scaled_probabilities`)."""
        return scaled_probabilities(logits, self.temperature, self.kind)

    def to_dict(self) -> dict[str, Any]:
        return {"temperature": float(self.temperature), "kind": self.kind, "split": self.split,
                "windows": int(self.windows), "nll_before": float(self.nll_before),
                "nll_after": float(self.nll_after), "shard_dir": self.shard_dir,
                "source": dict(self.source) if self.source else None}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Calibration:
        """Raises ValueError naming a missing key or a temperature that is not positive."""
        missing = [k for k in ("temperature", "kind", "split", "windows") if k not in d]
        if missing:
            raise ValueError(f"calibration lacks {', '.join(missing)}")
        t = float(d["temperature"])
        if not (math.isfinite(t) and t > 0) or d["kind"] not in CALIBRATION_KINDS:
            raise ValueError(f"calibration temperature={t} kind={d['kind']!r} is not a positive "
                             f"temperature of {CALIBRATION_KINDS}")
        return cls(t, str(d["kind"]), str(d["split"]), int(d["windows"]),
                   float(d.get("nll_before", math.nan)), float(d.get("nll_after", math.nan)),
                   str(d.get("shard_dir", "")), dict(d["source"]) if d.get("source") else None)


def fit_calibration(logits: torch.Tensor, labels: torch.Tensor, kind: str, split: str,
                    shard_dir: str = "", source: dict[str, str] | None = None,
                    max_iter: int = 100) -> Calibration:
    """:func:`fit_temperature` on ``logits`` / ``labels``, as a :class:`Calibration`."""
    t = fit_temperature(logits, labels, kind, max_iter)
    return Calibration(t, kind, split, int(labels.numel()), nll(logits, labels, kind),
                       nll(logits, labels, kind, t), str(shard_dir), source)


# ------------------------------------------------------------------------------ OOD reference


OOD_POOLINGS = ("mean", "head")  # the config's choice: every position, or as the head pools


def pooled_hidden(pooling: str, reduction: Reduction | None, hidden: torch.Tensor) -> torch.Tensor:
    """(B, T, C) hidden states -> (B, C): ``mean`` over positions, the ``last`` position, or
    ``attention`` with the weights of the head's :class:`AttentionPooling` (``reduction``)."""
    if pooling == "mean":
        return hidden.float().mean(dim=1)
    if pooling == "last":
        return hidden[:, -1].float()
    if pooling == "attention" and isinstance(reduction, AttentionPooling):
        weights = torch.softmax(reduction.score(hidden).float(), dim=1)  # (B, T, 1)
        return (weights * hidden.float()).sum(dim=1)
    raise ValueError(f"no {pooling!r} pooling of hidden states for a "
                     f"{type(reduction).__name__ if reduction is not None else 'head-less'} model")


def reference_pooling(setting: str, reduction: Reduction | None) -> str:
    """The pooling an :class:`OodReference` records for the config's ``ood_pooling``
    (:data:`OOD_POOLINGS`): ``mean``, or ``head``: the head's own ('last' | 'mean' |
    'attention'; a per-position head or none pools by the mean)."""
    if setting not in OOD_POOLINGS:
        raise ValueError(f"ood_pooling must be one of {OOD_POOLINGS}, got {setting!r}")
    if setting == "mean":
        return "mean"
    if isinstance(reduction, LastPosition):
        return "last"
    return "attention" if isinstance(reduction, AttentionPooling) else "mean"


def shrunk_covariance(features: torch.Tensor, shrinkage: float | None) -> tuple[torch.Tensor, float]:
    """The covariance of (N, C) ``features`` shrunk towards ``mu * I`` (``mu``: the mean
    variance): by ``shrinkage`` in [0, 1], or the Ledoit-Wolf estimate when None."""
    x = features.double().numpy()
    if shrinkage is None:
        from sklearn.covariance import LedoitWolf

        lw = LedoitWolf().fit(x)
        return torch.from_numpy(lw.covariance_), float(lw.shrinkage_)
    if not 0.0 <= shrinkage <= 1.0:
        raise ValueError(f"ood shrinkage must be in [0, 1] or null (Ledoit-Wolf), got {shrinkage}")
    cov = torch.from_numpy(x).T.cov(correction=0)
    mu = torch.trace(cov) / cov.shape[0]
    eye = torch.eye(cov.shape[0], dtype=cov.dtype)
    return (1 - shrinkage) * cov + shrinkage * mu * eye, float(shrinkage)


@dataclass
class OodReference:
    """The distribution of training windows' pooled hidden states.

    Attributes:
        mean: (C,) their mean.
        precision: (C, C) the inverse of their shrunk covariance.
        levels / quantiles: (Q,) quantile levels in (0, 1) and the Mahalanobis distances of
            held-out windows at them.
        threshold_level: the level whose quantile is the out-of-distribution threshold.
        pooling: how windows are pooled ('last' | 'mean' | 'attention').
        windows: training windows fitted; quantile_windows: windows the quantiles are of.
        shrinkage: the covariance's shrinkage (Ledoit-Wolf's estimate or the configured one).
        split: the split the reference windows are from.
    """

    mean: torch.Tensor
    precision: torch.Tensor
    levels: torch.Tensor
    quantiles: torch.Tensor
    threshold_level: float
    pooling: str
    windows: int
    quantile_windows: int
    shrinkage: float
    split: str = "train"

    @property
    def threshold(self) -> float:
        """The distance above which a window counts as out of distribution."""
        return float(torch.from_numpy(_interp([self.threshold_level], self.levels.numpy(),
                                              self.quantiles.numpy()))[0])

    def distances(self, features: torch.Tensor) -> torch.Tensor:
        """(N,) Mahalanobis distances of (N, C) pooled hidden states."""
        d = features.double() - self.mean.double()
        return torch.einsum("nc,cd,nd->n", d, self.precision.double(), d).clamp_min(0).sqrt()

    def percentiles(self, distances: torch.Tensor) -> torch.Tensor:
        """(N,) where ``distances`` fall among the held-out windows' (0-100, interpolated
        between the stored quantiles, clipped to the first and last level)."""
        levels = _interp(distances.double().numpy(), self.quantiles.numpy(), self.levels.numpy())
        return torch.from_numpy(levels) * 100.0

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean.float(), "precision": self.precision.float(),
                "levels": self.levels.double(), "quantiles": self.quantiles.double(),
                "threshold_level": float(self.threshold_level), "pooling": self.pooling,
                "windows": int(self.windows), "quantile_windows": int(self.quantile_windows),
                "shrinkage": float(self.shrinkage), "split": self.split}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> OodReference:
        """Raises ValueError naming a missing key or shapes that do not fit together."""
        keys = ("mean", "precision", "levels", "quantiles", "threshold_level", "pooling")
        missing = [k for k in keys if k not in d]
        if missing:
            raise ValueError(f"ood_reference lacks {', '.join(missing)}")
        mean, precision = torch.as_tensor(d["mean"]), torch.as_tensor(d["precision"])
        levels, quantiles = torch.as_tensor(d["levels"]), torch.as_tensor(d["quantiles"])
        c = mean.numel()
        if precision.shape != (c, c) or levels.shape != quantiles.shape or levels.ndim != 1:
            raise ValueError(f"ood_reference shapes do not fit: mean {tuple(mean.shape)}, "
                             f"precision {tuple(precision.shape)}, levels {tuple(levels.shape)}, "
                             f"quantiles {tuple(quantiles.shape)}")
        return cls(mean, precision, levels, quantiles, float(d["threshold_level"]),
                   str(d["pooling"]), int(d.get("windows", 0)), int(d.get("quantile_windows", 0)),
                   float(d.get("shrinkage", math.nan)), str(d.get("split", "train")))


def _interp(x: Sequence[float] | Any, xp: Any, fp: Any) -> Any:
    import numpy as np

    return np.interp(np.asarray(x, dtype=np.float64), np.asarray(xp, dtype=np.float64),
                     np.asarray(fp, dtype=np.float64))


def fit_ood_reference(features: torch.Tensor, held_out: torch.Tensor | None,
                      levels: Sequence[float], threshold_level: float,
                      shrinkage: float | None, pooling: str, split: str = "train") -> OodReference:
    """The :class:`OodReference` of (N, C) training ``features``; its quantiles are those of
    the distances of ``held_out`` windows (None: of ``features`` themselves, which sit closer
    to their own mean than new windows do).

    Raises:
        ValueError: fewer than 2 windows, ``threshold_level`` not among ``levels``, or levels
            outside (0, 1).
    """
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"an OOD reference needs >= 2 training windows, got {features.shape[0]}")
    levels = sorted(float(q) for q in levels)
    if any(not 0.0 < q < 1.0 for q in levels) or float(threshold_level) not in levels:
        raise ValueError(f"ood levels {levels} must lie in (0, 1) and hold threshold_level "
                         f"{threshold_level}")
    mean = features.double().mean(dim=0)
    cov, used = shrunk_covariance(features, shrinkage)
    precision = torch.linalg.pinv(cov, hermitian=True)
    ref = OodReference(mean, precision, torch.tensor(levels, dtype=torch.float64),
                       torch.zeros(len(levels), dtype=torch.float64), float(threshold_level),
                       pooling, int(features.shape[0]), 0, used, split)
    scored = features if held_out is None or held_out.shape[0] == 0 else held_out
    dist = ref.distances(scored)
    ref.quantiles = torch.quantile(dist, ref.levels.to(dist.dtype))
    ref.quantile_windows = int(scored.shape[0])
    return ref
