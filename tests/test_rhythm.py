"""Rhythm cross-check (heartgpt.data.rhythm): irregularity measures, the verdict, and the
`disagreement` flag between P(AF) and the intervals."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from heartgpt.data.demo import draw_subjects, synthesize
from heartgpt.data.rhythm import (
    cosen,
    disagreement,
    find_beats,
    rhythm_measures,
    rhythm_verdict,
)
from heartgpt.data.signal_quality import load_trust
from heartgpt.data.tokenizer import get_modality, resample


@pytest.fixture(scope="module")
def rs():
    return load_trust().rhythm


def beats_from_rr(rr: np.ndarray, rate: float = 50.0) -> np.ndarray:
    return np.round(np.concatenate([[0.0], np.cumsum(rr)]) * rate).astype(int) + 10


REGULAR = np.full(30, 0.8) + np.random.default_rng(1).normal(0, 0.01, 30)
IRREGULAR = np.random.default_rng(2).uniform(0.45, 1.15, 30)


def test_measures_of_crafted_intervals(rs):
    reg = rhythm_measures(beats_from_rr(REGULAR), 50.0, rs)
    irr = rhythm_measures(beats_from_rr(IRREGULAR), 50.0, rs)
    assert reg.intervals == irr.intervals == 30
    assert reg.heart_rate_bpm == pytest.approx(75, abs=1)
    assert reg.cv < 0.05 < 0.2 < irr.cv
    assert reg.pnn50 < 0.1 < 0.5 < irr.pnn50
    assert reg.nrmssd < irr.nrmssd
    assert reg.cosen < -1.4 < irr.cosen  # Lake & Moorman's AF threshold
    assert (rhythm_verdict(reg, rs), rhythm_verdict(irr, rs)) == ("regular", "irregular")
    # too few intervals: no verdict
    few = rhythm_measures(beats_from_rr(IRREGULAR[:4]), 50.0, rs)
    assert rhythm_verdict(few, rs) == "uncertain"


def test_cosen_is_sample_entropy_plus_log_terms(rs):
    """m=1 sample entropy at r = 30 ms checked by hand on a small series."""
    rr = np.array([0.80, 0.81, 0.80, 0.82, 0.81, 0.80, 0.81, 0.80])
    # length-1 pairs within 30 ms: all 21 of the first 7; length-2: all 21 too -> SampEn 0
    assert cosen(rr, rs) == pytest.approx(np.log(0.06) - np.log(rr.mean()))


def test_disagreement_both_ways(rs):
    reg = rhythm_measures(beats_from_rr(REGULAR), 50.0, rs)
    irr = rhythm_measures(beats_from_rr(IRREGULAR), 50.0, rs)
    assert "model says AF" in disagreement(0.93, reg, rs)
    assert "model says sinus" in disagreement(0.04, irr, rs)
    assert disagreement(0.93, irr, rs) is None
    assert disagreement(0.04, reg, rs) is None
    assert disagreement(float("nan"), reg, rs) is None
    # switched off: no measure used for 'regular' -> no AF-over-regular disagreement
    no_regular = dataclasses.replace(rs, regular_max={"cv": None, "cosen": None})
    assert disagreement(0.93, reg, no_regular) is None
    no_irregular = dataclasses.replace(rs, irregular_min={"cv": None, "cosen": None})
    assert disagreement(0.04, irr, no_irregular) is None


@pytest.mark.parametrize("modality", ["ecg", "ppg"])
def test_demo_af_subjects_separate_and_a_regular_recording_called_af_disagrees(rs, modality):
    """Held-out demo subjects (seed 2026): COSEn and CV of the library detector's beats are
    higher for every AF subject than for every other; P(AF)=0.9 over a sinus subject is a
    disagreement, over an AF subject it is not."""
    rate = get_modality(modality).sample_rate
    measures = []
    for s in draw_subjects(modality, 6, 2026):
        rec = synthesize(s, modality, 40.0)
        x = resample(rec.signal, rec.sample_rate, rate)
        measures.append((s.af, rhythm_measures(find_beats(x, rate, modality), rate, rs)))
    af = [m for a, m in measures if a]
    other = [m for a, m in measures if not a]
    assert len(af) == len(other) == 3
    assert min(m.cosen for m in af) > max(m.cosen for m in other)
    assert min(m.cv for m in af) > max(m.cv for m in other)
    for m in other:
        assert rhythm_verdict(m, rs) == "regular" and disagreement(0.9, m, rs)
    for m in af:
        assert rhythm_verdict(m, rs) == "irregular" and disagreement(0.9, m, rs) is None


def test_find_beats_on_flat_and_bad_modality():
    assert find_beats(np.zeros(500), 50.0, "ppg").size == 0
    with pytest.raises(ValueError, match="modality"):
        find_beats(np.random.default_rng(0).normal(size=500), 50.0, "eeg")
