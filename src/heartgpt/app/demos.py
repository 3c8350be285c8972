"""Bundled demo signals: SYNTHETIC ECG/PPG from :mod:`heartgpt.data.demo`, no file needed.

Each demo is one simulated subject drawn with a fixed seed, so a demo is the same signal on
every machine and in every session. They are generated on first use and cached.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from heartgpt.data.demo import NATIVE_RATE, Subject, synthesize


@dataclass(frozen=True)
class Demo:
    """One synthetic recording: modality, rhythm, length and the subject's seed."""

    stem: str  # file-name stem of the outputs
    modality: str
    af: bool
    seconds: float
    heart_rate: float
    seed: int

    @property
    def sample_rate(self) -> float:
        return NATIVE_RATE[self.modality]


DEMOS: dict[str, Demo] = {
    "synthetic ECG, sinus rhythm (60 s)": Demo("demo_ecg_sinus", "ecg", False, 60, 68.0, 11),
    "synthetic ECG, AF-like rhythm (60 s)": Demo("demo_ecg_af", "ecg", True, 60, 96.0, 12),
    "synthetic PPG, sinus rhythm (60 s)": Demo("demo_ppg_sinus", "ppg", False, 60, 72.0, 13),
    "synthetic PPG, AF-like rhythm (60 s)": Demo("demo_ppg_af", "ppg", True, 60, 98.0, 14),
    "synthetic PPG, sinus rhythm (1 hour)": Demo("demo_ppg_1h", "ppg", False, 3600, 66.0, 15),
}
SHORT_DEMOS = [name for name, d in DEMOS.items() if d.seconds <= 60]
PPG_DEMOS = [name for name, d in DEMOS.items() if d.modality == "ppg"]


@lru_cache(maxsize=len(DEMOS))
def demo_signal(name: str) -> np.ndarray:
    """The samples of demo ``name`` at its native rate (read-only; cached)."""
    try:
        d = DEMOS[name]
    except KeyError:
        raise ValueError(f"unknown demo signal {name!r}; expected one of {list(DEMOS)}") from None
    subject = Subject(d.stem, d.af, d.heart_rate, d.seed)
    x = np.asarray(synthesize(subject, d.modality, d.seconds).signal, dtype=np.float64)
    x.flags.writeable = False  # shared by every session
    return x
