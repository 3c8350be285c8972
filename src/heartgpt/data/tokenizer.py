"""From a raw ECG/PPG signal to HeartGPT tokens.

The released HeartGPT tokenises a window by min-max scaling it to 0..100 and rounding
(numpy round-half-to-even), after the signal is at the modality's sampling rate
(ECG 100 Hz, PPG 50 Hz). Everything here reproduces that bit for bit on the released
example inputs, and refuses windows that cannot be tokenised (NaN/inf, flat, too short)
with a ``ValueError`` instead of producing NaNs as the released code does.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from scipy.signal import firwin, resample_poly

LEVELS = 100  # tokens take the values 0..LEVELS


@dataclass(frozen=True)
class Modality:
    """Facts of a signal modality as the released models were trained on it."""

    name: str
    sample_rate: float  # Hz
    vocab_size: int  # tokens only ever take 0..LEVELS; PPG's 102nd class is a spare


MODALITIES: dict[str, Modality] = {
    "ecg": Modality("ecg", sample_rate=100.0, vocab_size=101),
    "ppg": Modality("ppg", sample_rate=50.0, vocab_size=102),
}


def get_modality(name: str) -> Modality:
    """Return the :class:`Modality` called ``name`` ('ecg' or 'ppg')."""
    try:
        return MODALITIES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown modality {name!r}; expected one of {sorted(MODALITIES)}") from None


def resample(signal: np.ndarray, rate_in: float, rate_out: float) -> np.ndarray:
    """Resample a 1-D signal from ``rate_in`` to ``rate_out`` Hz (polyphase, anti-aliased).

    The ratio is approximated by a fraction with denominator <= 1000, which is exact for
    every common clinical rate (125, 128, 250, 256, 360, 500, 1000 Hz ...).
    """
    if not (np.isfinite(rate_in) and rate_in > 0):
        raise ValueError(f"sampling rate must be a positive number, got {rate_in!r}")
    if not (np.isfinite(rate_out) and rate_out > 0):
        raise ValueError(f"target sampling rate must be a positive number, got {rate_out!r}")
    x = np.asarray(signal, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"expected a 1-D signal, got shape {x.shape}")
    if rate_in == rate_out:
        return x
    ratio = Fraction(rate_out / rate_in).limit_denominator(1000)
    up, down = ratio.numerator, ratio.denominator
    return resample_poly(x, up, down, window=_antialias_filter(up, down))


@functools.lru_cache(maxsize=64)
def _antialias_filter(up: int, down: int) -> np.ndarray:
    """The low-pass FIR filter ``resample_poly`` designs for ``(up, down)`` by default (Kaiser
    window, beta 5; the same taps to the bit), designed once per ratio instead of per record."""
    max_rate = max(up, down)
    taps = firwin(2 * 10 * max_rate + 1, 1.0 / max_rate, window=("kaiser", 5.0))
    taps.setflags(write=False)  # resample_poly copies it before scaling
    return taps


def check_window(window: np.ndarray, length: int | None = None) -> np.ndarray:
    """Validate a window for tokenisation; return it as float64. Raises ``ValueError``."""
    x = np.asarray(window)
    if x.ndim != 1:
        raise ValueError(f"expected a 1-D window, got shape {x.shape}")
    if x.size == 0:
        raise ValueError("empty window")
    if length is not None and x.size < length:
        raise ValueError(f"window too short: {x.size} samples, need {length}")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise ValueError(f"window must be real numbers, got dtype {x.dtype}")
    bad = ~np.isfinite(x)
    if bad.any():
        raise ValueError(
            f"window has {int(bad.sum())} NaN/inf sample(s), first at index {int(np.argmax(bad))}"
        )
    lo, hi = float(x.min()), float(x.max())
    if hi == lo:
        raise ValueError(f"flat window: all {x.size} samples equal {float(x.flat[0]):g}")
    with np.errstate(over="ignore"):
        span = np.float64(hi) - np.float64(lo)
    if not np.isfinite(span):  # scaling would give inf/NaN, and those round to garbage tokens
        raise ValueError(f"values too large to scale: the window spans {lo:g} to {hi:g}, a "
                         "range beyond float64")
    return x


def tokenize_window(window: np.ndarray, length: int | None = None) -> np.ndarray:
    """Min-max scale one window to 0..100 and round, exactly as the released HeartGPT.

    Args:
        window: 1-D samples already at the modality rate.
        length: if given, the window must hold at least this many samples.

    Returns:
        int64 tokens in 0..100, same length as ``window``.
    """
    x = check_window(window, length)
    lo, hi = x.min(), x.max()
    # Same operation order as the release: ((x - min) / (max - min)) * 100, then np.round.
    return np.round((x - lo) / (hi - lo) * LEVELS).astype(np.int64)


def tokenize_context(
    signal: np.ndarray,
    sample_rate: float,
    modality: str | Modality,
    block_size: int = 500,
) -> np.ndarray:
    """Tokenise a model context as the released GUIs do.

    Resample to the modality rate, keep the last ``block_size`` samples, min-max scale that
    window to 0..100 and round.
    """
    mod = get_modality(modality) if isinstance(modality, str) else modality
    x = resample(np.asarray(signal, dtype=np.float64).reshape(-1), sample_rate, mod.sample_rate)
    return tokenize_window(x[-block_size:])


def sliding_windows(n_samples: int, length: int, stride: int) -> np.ndarray:
    """Start indices of windows of ``length`` every ``stride`` samples that fit in ``n_samples``."""
    if length <= 0 or stride <= 0:
        raise ValueError(f"length and stride must be positive, got {length=} {stride=}")
    if n_samples < length:
        return np.zeros(0, dtype=np.int64)
    return np.arange(0, n_samples - length + 1, stride, dtype=np.int64)
