"""Matplotlib figures of the tools (Agg backend, no display needed).

Every helper takes plain numpy arrays and returns a :class:`~matplotlib.figure.Figure`, so the
CLIs save them with :func:`save_figure` and a Lightning callback can log them as images
(e.g. ``logger.experiment.add_figure`` or ``wandb.Image(fig)``) without touching files.
Figures are built without ``pyplot`` (no global figure registry to leak from, no GUI backend:
PNGs render with Agg), so importing this module changes no matplotlib state; the CLIs call
``matplotlib.use("Agg")`` for the rest of their process.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure
from matplotlib.image import AxesImage

DPI = 100
_SIGNAL = "0.15"  # colour of the raw signal / context
LONG_SECONDS = 60.0  # longer recordings: an overview of the whole and a zoom
ZOOM_SECONDS = 30.0  # the zoom of a long recording when no length is given
OVERVIEW_BINS = 2000  # the overview draws the min/max of at most this many bins


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = DPI) -> Path:
    """Write ``fig`` as a PNG with a 256-colour palette (a third of the size)."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format="png")
    buf.seek(0)
    with Image.open(buf) as im:
        im.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(
            path, format="PNG", optimize=True)
    return path


def _figure(figsize: tuple[float, float]) -> Figure:
    return Figure(figsize=figsize, layout="constrained")


def _seconds(n: int, sample_rate: float, start: int = 0) -> np.ndarray:
    return (start + np.arange(n)) / sample_rate


def duration_text(seconds: float) -> str:
    """A duration in seconds for a title or legend: ``300``, ``30``, ``8.5``, ``0.04``."""
    seconds = float(seconds)
    return f"{round(seconds, 1):g}" if abs(seconds) >= 1 else f"{seconds:.2g}"


# ------------------------------------------------------------------------------- generation
def plot_generation(
    context: np.ndarray, samples: np.ndarray, sample_rate: float, title: str = "", max_rows: int = 4
) -> Figure:
    """Context tokens (T,) followed by each generated continuation (S, N), one row a sample."""
    samples = np.atleast_2d(samples)
    rows = min(len(samples), max_rows)
    fig = _figure(figsize=(10, 1.6 + 1.4 * rows))
    axes = fig.subplots(rows, 1, sharex=True, squeeze=False)
    t_ctx = _seconds(len(context), sample_rate)
    t_new = _seconds(samples.shape[1], sample_rate, start=len(context))
    for i, ax in enumerate(axes[:, 0]):
        ax.plot(t_ctx, context, color=_SIGNAL, lw=0.8, label="context")
        # join the continuation to the last context token so there is no visual gap
        ax.plot(np.r_[t_ctx[-1:], t_new], np.r_[context[-1:], samples[i]], color="C3", lw=0.8,
                label="generated")
        ax.axvline(t_ctx[-1], color="0.6", ls="--", lw=0.8)
        ax.set_ylabel(f"sample {i}\ntoken")
        ax.set_ylim(-3, 103)
    axes[0, 0].legend(loc="upper left", fontsize=8, ncol=2)
    axes[-1, 0].set_xlabel("time (s)")
    more = f" (first {rows} of {len(samples)} samples)" if len(samples) > rows else ""
    fig.suptitle((title + more).strip(), fontsize=10)
    return fig


# ------------------------------------------------------------------------------- long signals
def finite_or_nan(x: np.ndarray) -> np.ndarray:
    """(n,) float64 copy with +-inf as NaN: matplotlib draws both as gaps."""
    x = np.asarray(x, dtype=np.float64)
    return np.where(np.isfinite(x), x, np.nan)


def finite_limits(x: np.ndarray, margin: float = 0.02) -> tuple[float, float]:
    """y limits from the finite samples of ``x``, ``margin`` of the range added on each side;
    a flat signal gets +-0.5 around its value, one with no finite sample (0, 1)."""
    x = np.asarray(x, dtype=np.float64)
    finite = x[np.isfinite(x)]
    if not len(finite):
        return 0.0, 1.0
    lo, hi = float(finite.min()), float(finite.max())
    if hi - lo <= 1e-12 * max(abs(lo), abs(hi), 1.0):
        return lo - 0.5, hi + 0.5
    pad = margin * (hi - lo)
    return lo - pad, hi + pad


def envelope(x: np.ndarray, bins: int = OVERVIEW_BINS) -> tuple[np.ndarray, np.ndarray, int]:
    """Min and max of the finite samples in each of at most ``bins`` consecutive bins:
    ``(lo (B,), hi (B,), samples per bin)``; NaN for a bin with no finite sample."""
    x = finite_or_nan(x)
    per_bin = max(1, -(-len(x) // bins))
    padded = np.pad(x, (0, -len(x) % per_bin), constant_values=np.nan).reshape(-1, per_bin)
    return np.fmin.reduce(padded, axis=1), np.fmax.reduce(padded, axis=1), per_bin  # NaN-aware


def is_long(n_samples: int, sample_rate: float) -> bool:
    """Whether a recording gets an overview and a zoom (longer than :data:`LONG_SECONDS`)."""
    return n_samples / sample_rate > LONG_SECONDS


def _zoom_span(n: int, sample_rate: float, start: int, length: int | None) -> tuple[int, int]:
    """Samples [start, end) of the zoom: ``length`` samples, or :data:`ZOOM_SECONDS`."""
    length = round(ZOOM_SECONDS * sample_rate) if length is None else length
    return start, min(n, start + length)


def _draw_overview(ax: Axes, signal: np.ndarray, sample_rate: float, span: tuple[int, int]
                   ) -> None:
    """The whole signal as a min/max envelope, the zoom's span shaded."""
    lo, hi, per_bin = envelope(signal)
    t = (np.arange(len(lo)) * per_bin + (per_bin - 1) / 2) / sample_rate  # (B,) bin centres
    ax.fill_between(t, lo, hi, color=_SIGNAL, lw=0.6, step="mid")
    ax.axvspan(span[0] / sample_rate, span[1] / sample_rate, color="C0", alpha=0.2, lw=0)
    ax.set_xlim(0, len(signal) / sample_rate)
    ax.set_ylim(*finite_limits(signal))
    ax.set_ylabel("whole\nrecording")
    ax.set_title(f"overview of the {duration_text(len(signal) / sample_rate)} s (shaded: the "
                 f"zoom below, {duration_text(span[0] / sample_rate)}-"
                 f"{duration_text(span[1] / sample_rate)} s)", fontsize=8, loc="left")
    ax.set_label("overview")


# ------------------------------------------------------------------------------- AF screening
def _af_per_sample(n: int, starts: np.ndarray, window: int, probs: np.ndarray) -> np.ndarray:
    """(n,) mean probability of the usable windows covering each sample; NaN where none."""
    acc, cnt = np.zeros(n), np.zeros(n)
    for s, p in zip(starts, probs, strict=True):
        if np.isfinite(p):
            acc[s : s + window] += p
            cnt[s : s + window] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return acc / cnt


def _draw_shaded_signal(ax: Axes, signal: np.ndarray, per_sample: np.ndarray,
                        sample_rate: float, start: int, end: int, step: int = 1,
                        line: bool = True) -> AxesImage:
    """Samples [start, end) of the signal (``line``) over a band coloured by the per-sample AF
    probability (every ``step``-th sample); returns the image for a colour bar."""
    t = _seconds(end - start, sample_rate, start)
    lo, hi = finite_limits(signal[start:end])
    cmap = colormaps["RdYlGn_r"].with_extremes(bad="0.85")  # no usable window
    half = 0.5 / sample_rate
    im = ax.imshow(np.ma.masked_invalid(per_sample[start:end:step])[None, :], aspect="auto",
                   cmap=cmap, vmin=0, vmax=1, alpha=0.45, interpolation="nearest",
                   extent=(t[0] - half, t[-1] + half, lo, hi))
    if line:
        ax.plot(t, finite_or_nan(signal[start:end]), color=_SIGNAL, lw=0.6)
    ax.set_xlim(t[0] - half, t[-1] + half)
    ax.set_ylim(lo, hi)
    ax.set_ylabel("signal")
    return im


UNRELIABLE_LABEL = "unreliable"  # the legend entry of the hatched unreliable windows


def unreliable_spans(starts: np.ndarray, window: int, unreliable: np.ndarray | None,
                     sample_rate: float) -> list[tuple[float, float]]:
    """The seconds ``[start, end)`` the ``unreliable`` (W,) windows cover, overlapping windows
    merged ([] for None or no flagged window).

    Raises:
        ValueError: ``unreliable`` is not one flag per window.
    """
    if unreliable is None:
        return []
    flags = np.asarray(unreliable, dtype=bool).reshape(-1)
    if flags.size != len(starts):
        raise ValueError(f"unreliable has {flags.size} flags for {len(starts)} windows")
    spans: list[tuple[float, float]] = []
    for s in np.sort(np.asarray(starts)[flags]).tolist():
        a, b = s / sample_rate, (s + window) / sample_rate
        if spans and a <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(spans[-1][1], b))
        else:
            spans.append((a, b))
    return spans


def shade_spans(ax: Axes, spans: Sequence[tuple[float, float]], legend: bool = False) -> None:
    """Hatch the time ``spans`` (s) of ``ax`` grey; ``legend``: the first one labelled
    :data:`UNRELIABLE_LABEL`."""
    for i, (a, b) in enumerate(spans):
        ax.axvspan(a, b, facecolor="0.6", alpha=0.55, hatch="//", edgecolor="0.25", lw=0,
                   zorder=1.5, label=UNRELIABLE_LABEL if legend and i == 0 else None)


def _draw_window_probs(axp: Axes, starts: np.ndarray, window: int, probs: np.ndarray,
                       threshold: float, sample_rate: float,
                       spans: Sequence[tuple[float, float]] = ()) -> None:
    """The probability of every window at its centre; skipped windows as grey crosses, the
    ``spans`` of unreliable windows hatched (both with a legend entry)."""
    centres = (np.asarray(starts) + window / 2) / sample_rate
    ok = np.isfinite(probs)
    axp.plot(centres[ok], probs[ok], ".-", color="C3", ms=3, lw=0.8)
    shade_spans(axp, spans, legend=True)
    if (~ok).any():
        axp.plot(centres[~ok], np.zeros((~ok).sum()), "x", color="0.5", label="skipped window")
    if (~ok).any() or spans:
        axp.legend(loc="upper right", fontsize=8)
    axp.axhline(threshold, color="0.4", ls="--", lw=0.8)
    axp.set_ylim(-0.03, 1.03)
    axp.set_ylabel("P(AF) per\nwindow")
    axp.set_label("probability")


def plot_af(
    signal: np.ndarray,
    sample_rate: float,
    starts: np.ndarray,
    window: int,
    probs: np.ndarray,
    threshold: float = 0.5,
    title: str = "",
    zoom_start: int = 0,
    zoom_length: int | None = None,
    unreliable: np.ndarray | None = None,
) -> Figure:
    """The signal shaded by AF probability (mean over the windows covering each sample), and
    the probability of every window at its centre; skipped windows (NaN) are marked grey.
    ``unreliable``: (W,) bool, the windows the trust checks flagged
    (:class:`~heartgpt.inference.window_trust.WindowTrust` ``.unreliable``): their time is
    hatched grey on every axis, with a legend entry "unreliable".

    Non-finite samples are drawn as gaps and the limits come from the finite ones. A recording
    longer than :data:`LONG_SECONDS` gets three rows: an ``overview`` axis (the whole signal's
    envelope, shaded by probability), the ``probability`` of every window over the whole
    recording, and a ``zoom`` axis on samples [zoom_start, zoom_start + zoom_length) (default:
    the first :data:`ZOOM_SECONDS`); the axes are named so (``ax.get_label()``).
    """
    n = len(signal)
    per_sample = _af_per_sample(n, starts, window, probs)  # (n,)
    spans = unreliable_spans(starts, window, unreliable, sample_rate)
    if not is_long(n, sample_rate):
        return _plot_af_short(signal, sample_rate, starts, window, probs, per_sample, threshold,
                              title, spans)
    fig = _figure(figsize=(10, 6.4))
    ax_over, axp, ax_zoom = fig.subplots(3, 1, gridspec_kw={"height_ratios": [1.4, 1, 2]})
    axp.sharex(ax_over)
    span = _zoom_span(n, sample_rate, zoom_start, zoom_length)
    step = max(1, n // OVERVIEW_BINS)
    im = _draw_shaded_signal(ax_over, signal, per_sample, sample_rate, 0, n, step=step,
                             line=False)  # the envelope draws the signal
    _draw_overview(ax_over, signal, sample_rate, span)
    _draw_window_probs(axp, starts, window, probs, threshold, sample_rate, spans)
    _draw_shaded_signal(ax_zoom, signal, per_sample, sample_rate, *span)
    shade_spans(ax_over, spans)
    shade_spans(ax_zoom, spans)
    ax_zoom.set_label("zoom")
    ax_zoom.set_title(f"zoom: {duration_text(span[0] / sample_rate)}-"
                      f"{duration_text(span[1] / sample_rate)} s", fontsize=8, loc="left")
    ax_zoom.set_xlabel("time (s)")
    fig.colorbar(im, ax=[ax_over, axp, ax_zoom], label="AF probability", pad=0.01)
    fig.suptitle(title, fontsize=10)
    return fig


def _plot_af_short(signal: np.ndarray, sample_rate: float, starts: np.ndarray, window: int,
                   probs: np.ndarray, per_sample: np.ndarray, threshold: float, title: str,
                   spans: list[tuple[float, float]]) -> Figure:
    """:func:`plot_af` of a recording up to :data:`LONG_SECONDS`: signal and probabilities."""
    fig = _figure(figsize=(10, 4.2))
    ax, axp = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    im = _draw_shaded_signal(ax, signal, per_sample, sample_rate, 0, len(signal))
    shade_spans(ax, spans)
    ax.set_label("signal")
    fig.colorbar(im, ax=ax, label="AF probability", pad=0.01)
    _draw_window_probs(axp, starts, window, probs, threshold, sample_rate, spans)
    axp.set_xlabel("time (s)")
    fig.colorbar(im, ax=axp, pad=0.01).remove()  # keep both axes the same width
    fig.suptitle(title, fontsize=10)
    return fig


# ------------------------------------------------------------------------------- beats
def plot_beats(
    signal: np.ndarray,
    confidence: np.ndarray,
    peaks: np.ndarray,
    sample_rate: float,
    start: int = 0,
    length: int | None = None,
    title: str = "",
    thresholds: Sequence[float] = (0.2051, 0.4598),
) -> Figure:
    """Signal with detected beats, and the beat confidence, over samples [start, start+length).

    The legend counts the beats in this view (``beats (30 in this 30-s view)``); the title,
    the caller's, is the place for the whole recording's count. Non-finite samples are gaps.
    A recording longer than :data:`LONG_SECONDS` gets an ``overview`` axis (the whole signal's
    envelope, the view shaded) above the view, the ``zoom``; ``length=None`` there means the
    first :data:`ZOOM_SECONDS` from ``start`` (the whole recording would be a solid band).
    """
    n = len(signal)
    sig = finite_or_nan(signal)  # (n,)
    if not is_long(n, sample_rate):
        fig = _figure(figsize=(10, 4.2))
        ax, axc = fig.subplots(2, 1, sharex=True)
        end = n if length is None else min(n, start + length)
        ax.set_label("signal")
    else:
        fig = _figure(figsize=(10, 5.8))
        ax_over, ax, axc = fig.subplots(3, 1, gridspec_kw={"height_ratios": [1, 2, 1.6]})
        axc.sharex(ax)
        start, end = _zoom_span(n, sample_rate, start, length)
        _draw_overview(ax_over, sig, sample_rate, (start, end))
        ax.set_label("zoom")
    _draw_beats_view(ax, axc, sig, confidence, peaks, sample_rate, start, end, thresholds)
    fig.suptitle(title, fontsize=10)
    return fig


def _draw_beats_view(ax: Axes, axc: Axes, signal: np.ndarray, confidence: np.ndarray,
                     peaks: np.ndarray, sample_rate: float, start: int, end: int,
                     thresholds: Sequence[float]) -> None:
    """Signal and beats on ``ax``, confidence on ``axc``, over samples [start, end)."""
    sl = slice(start, end)
    t = _seconds(end - start, sample_rate, start)
    pk = peaks[(peaks >= start) & (peaks < end)]
    ax.plot(t, signal[sl], color=_SIGNAL, lw=0.7)
    view = duration_text((end - start) / sample_rate)
    where = (f"in the whole {view}-s recording" if (start, end) == (0, len(signal))
             else f"in this {view}-s view")
    ax.plot(pk / sample_rate, signal[pk], "v", color="C3", ms=5,
            label=f"beats ({len(pk)} {where})")
    ax.set_ylabel("signal")
    ax.legend(loc="upper right", fontsize=8)
    axc.plot(t, confidence[sl], color="C0", lw=0.8)
    axc.plot(pk / sample_rate, confidence[pk], "v", color="C3", ms=4)
    for th, name in zip(thresholds, ("Low | Medium", "Medium | High"), strict=True):
        axc.axhline(th, color="0.5", ls=":", lw=0.8)
        axc.text(t[0], th, f" {name}", fontsize=7, va="bottom", color="0.35")
    axc.set_xlim(start / sample_rate, end / sample_rate)
    axc.set_ylim(-0.02, 1.02)
    axc.set_ylabel("beat confidence")
    axc.set_xlabel("time (s)")
    axc.set_label("confidence")


# ------------------------------------------------------------------------------- attention
def plot_attention_heads(attn: np.ndarray, layer: int, title: str = "") -> Figure:
    """Every head's attention map (nh, T, T) of one layer, query rows x key columns.

    Shown on a power-law colour scale (gamma 0.3): the weights are spread over hundreds of
    keys, so on a linear scale all but the largest vanish.
    """
    nh = attn.shape[0]
    cols = min(nh, 4)
    rows = -(-nh // cols)
    fig = _figure(figsize=(2.6 * cols, 2.6 * rows + 0.4))
    axes = fig.subplots(rows, cols, squeeze=False)
    T = attn.shape[-1]
    # The first queries see few keys (query 0 only itself: weight 1); scale by the rest.
    vmax = float(attn[:, T // 10 :].max()) if T >= 10 else float(attn.max())
    norm = PowerNorm(gamma=0.3, vmin=0.0, vmax=vmax or 1.0)
    cmap = colormaps["magma"].with_extremes(bad="white")  # masked: the future keys
    future = np.triu(np.ones((T, T), dtype=bool), k=1)
    for h, ax in enumerate(axes.flat):
        if h >= nh:
            ax.axis("off")
            continue
        im = ax.imshow(np.ma.array(attn[h], mask=future), cmap=cmap, norm=norm,
                       interpolation="antialiased")
        ax.set_title(f"head {h}", fontsize=8)
        ax.tick_params(labelsize=6)
        if h % cols == 0:
            ax.set_ylabel("query position", fontsize=7)
        if h >= nh - cols:
            ax.set_xlabel("key position", fontsize=7)
    fig.colorbar(im, ax=axes, shrink=0.6, label="attention weight", extend="max")
    fig.suptitle(title or f"layer {layer}", fontsize=10)
    return fig


def plot_aggregate_attention(
    tokens: np.ndarray, rows: np.ndarray, sample_rate: float, query: int, title: str = ""
) -> Figure:
    """The paper's aggregate view: per layer, the head-summed attention row of one query
    (rows: (L, T)) drawn as the colour of the context it attends to (power scale 0.4: most
    weight sits on the last few tokens)."""
    n_layer, T = rows.shape
    t = _seconds(T, sample_rate)
    fig = _figure(figsize=(10, 0.9 * n_layer + 0.8))
    axes = fig.subplots(n_layer, 1, sharex=True, squeeze=False)
    for layer, ax in enumerate(axes[:, 0]):
        ax.plot(t, tokens, color="0.75", lw=0.8, zorder=1)
        sc = ax.scatter(t, tokens, c=rows[layer], s=4, cmap="viridis", zorder=2,
                        norm=PowerNorm(0.4, vmin=0, vmax=max(float(rows[layer].max()), 1e-9)))
        ax.axvline(t[query], color="C3", lw=0.8)
        ax.set_ylabel(f"layer {layer}", fontsize=8)
        ax.set_yticks([])
        cbar = fig.colorbar(sc, ax=ax, pad=0.005, aspect=8)
        cbar.set_label("attention\nweight", fontsize=6)
        cbar.ax.tick_params(labelsize=6)
    axes[-1, 0].set_xlabel("time (s)  (red line: query position)")
    fig.suptitle(title, fontsize=10)
    return fig


def plot_folded_attention(
    folded: np.ndarray, previous: np.ndarray, period: int, sample_rate: float, title: str = ""
) -> Figure:
    """Attention on previous cycles by lag mod the period, relative to uniform (L, period),
    and the fraction of attention that goes to previous cycles (L,)."""
    n_layer = folded.shape[0]
    lag_s = np.arange(period) / sample_rate
    fig = _figure(figsize=(11, 3.6))
    ax, axl, axf = fig.subplots(1, 3, gridspec_kw={"width_ratios": [3, 2.2, 1.1]})
    half = 0.5 / sample_rate
    im = ax.imshow(folded, aspect="auto", cmap="viridis", interpolation="nearest",
                   extent=(-half, lag_s[-1] + half, n_layer - 0.5, -0.5))
    ax.set_xlabel("lag mod cardiac period (s); 0 = same phase")
    ax.set_ylabel("layer")
    fig.colorbar(im, ax=ax, label="attention / uniform", pad=0.01)
    cmap = colormaps["viridis"]
    for layer in range(n_layer):
        axl.plot(lag_s, folded[layer], color=cmap(layer / max(n_layer - 1, 1)), lw=1,
                 label=f"{layer}")
    axl.axhline(1.0, color="0.5", ls=":", lw=0.8)
    axl.set_xlabel("lag mod period (s)")
    axl.set_ylabel("attention / uniform")
    axl.legend(title="layer", fontsize=6, title_fontsize=7, ncol=2)
    axf.barh(range(n_layer), previous, color=[cmap(i / max(n_layer - 1, 1))
                                               for i in range(n_layer)])
    axf.set_ylim(n_layer - 0.5, -0.5)
    axf.set_xlim(0, 1)
    axf.set_xlabel("share on previous\ncycles")
    axf.set_ylabel("layer")
    fig.suptitle(title, fontsize=10)
    return fig


def plot_homonyms(
    similarity: np.ndarray,
    labels: np.ndarray,
    within: np.ndarray,
    across: np.ndarray,
    value: int,
    depths: Sequence[int] | None = None,
    title: str = "",
) -> Figure:
    """Cosine similarity of same-value tokens at several depths (matrices ordered by phase
    group) and the mean within-group vs across-group similarity at every depth."""
    n_depth = similarity.shape[0]
    if depths is None:
        depths = sorted({0, n_depth // 4, n_depth // 2, (3 * n_depth) // 4, n_depth - 1})
    order = np.argsort(labels, kind="stable")
    boundary = int((labels[order] == labels[order][0]).sum()) - 0.5
    vmin = np.floor(min(similarity[d].min() for d in depths) * 10) / 10
    fig = _figure(figsize=(2.2 * len(depths) + 3.6, 3.2))
    grid = fig.add_gridspec(1, len(depths) + 3, width_ratios=[1] * len(depths) + [0.08, 0.3, 1.7])
    for i, d in enumerate(depths):
        ax = fig.add_subplot(grid[0, i])
        im = ax.imshow(similarity[d][np.ix_(order, order)], cmap="viridis", vmin=vmin, vmax=1,
                       interpolation="nearest")
        ax.axhline(boundary, color="k", lw=0.8)
        ax.axvline(boundary, color="k", lw=0.8)
        ax.set_title("embedding" if d == 0 else f"after block {d - 1}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        if i == 0:  # name the two blocks of rows
            groups = labels[order]
            n_first = int(boundary + 0.5)
            ax.set_yticks([(n_first - 1) / 2, n_first + (len(groups) - n_first - 1) / 2],
                          [groups[0], groups[-1]], rotation=90, va="center", fontsize=8)
            ax.tick_params(axis="y", length=0)
    fig.colorbar(im, cax=fig.add_subplot(grid[0, len(depths)]), label="cosine similarity")
    fig.add_subplot(grid[0, len(depths) + 1]).axis("off")  # room for the colorbar's label
    ax = fig.add_subplot(grid[0, -1])
    ax.plot(range(n_depth), within, "o-", ms=3, label="same phase")
    ax.plot(range(n_depth), across, "s-", ms=3, label="other phase")
    ax.set_xticks(range(n_depth), ["emb", *[str(i) for i in range(n_depth - 1)]], fontsize=7)
    ax.set_xlabel("depth (block output)")
    ax.set_ylabel("mean cosine similarity")
    ax.legend(fontsize=7)
    counts = ", ".join(f"{k}: {int((labels == k).sum())}" for k in np.unique(labels))
    fig.suptitle(f"{title} token value {value} ({counts})".strip(), fontsize=10)
    return fig


def plot_attention_shift(
    tokens: np.ndarray, shift: np.ndarray, sample_rate: float, title: str = ""
) -> Figure:
    """Context coloured by the change of attention (fine-tuned minus base) of the last token."""
    t = _seconds(len(tokens), sample_rate)
    lim = float(np.abs(shift).max()) or 1.0
    fig = _figure(figsize=(10, 4.0))
    ax, axs = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    ax.plot(t, tokens, color="0.75", lw=0.8, zorder=1)
    sc = ax.scatter(t, tokens, c=shift, cmap="coolwarm", vmin=-lim, vmax=lim, s=6, zorder=2)
    ax.set_ylabel("token")
    fig.colorbar(sc, ax=ax, label="attention weight change\n(fine-tuned - base)", pad=0.01)
    axs.bar(t, shift, width=1.0 / sample_rate, color=np.where(shift >= 0, "C3", "C0"))
    axs.axhline(0, color="0.4", lw=0.6)
    axs.set_ylabel("fine-tuned - base")
    axs.set_xlabel("time (s)")
    fig.colorbar(sc, ax=axs, pad=0.01).remove()
    fig.suptitle(title, fontsize=10)
    return fig
