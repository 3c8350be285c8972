"""The plausibility checks (``heartgpt.data.plausibility``): the dominant rhythm of a recording
and its evident modality, on SYNTHETIC demo subjects and the released example inputs."""

from __future__ import annotations

import numpy as np
import pytest

from heartgpt.data.demo import NATIVE_RATE, draw_subjects, synthesize
from heartgpt.data.plausibility import assess, check_recording, recording_problems
from heartgpt.data.tokenizer import resample
from heartgpt.errors import InputError

RATE = {"ecg": 100.0, "ppg": 50.0}


def _sinus(modality: str, n: int = 4) -> list[tuple[float, np.ndarray]]:
    """(heart rate, signal at the modality rate) of ``n`` sinus-rhythm demo subjects."""
    subjects = [s for s in draw_subjects(modality, 4 * n, 0) if not s.af][:n]
    return [(s.heart_rate, resample(synthesize(s, modality, 30).signal, NATIVE_RATE[modality],
                                    RATE[modality])) for s in subjects]


@pytest.mark.parametrize("modality", ["ecg", "ppg"])
def test_the_rhythm_and_the_modality_of_sinus_recordings(modality):
    for heart_rate, x in _sinus(modality):
        seen = assess(x, RATE[modality])
        assert seen.bpm == pytest.approx(heart_rate, rel=0.05)
        assert seen.modality == modality
        assert recording_problems(x, RATE[modality], modality).warnings() == []


@pytest.mark.parametrize("modality", ["ecg", "ppg"])
def test_a_rate_ten_times_too_low_is_flagged_and_the_modality_not_judged(modality):
    rate = RATE[modality]
    for _, x in _sinus(modality):
        problems = recording_problems(x, rate / 10, modality)  # resampled: 10x slower
        assert problems.rate and "is the sampling rate right?" in problems.rate
        assert problems.modality is None


def test_an_ecg_model_on_a_ppg_recording():
    _, ppg = _sinus("ppg", 1)[0]
    with pytest.raises(InputError, match=r"rec.csv: looks like PPG, not ECG .*--modality ecg"):
        check_recording("rec.csv", ppg, 50.0, "ecg", stated=False)
    [warning] = check_recording("rec.csv", ppg, 50.0, "ecg", stated=True)
    assert warning.startswith("looks like PPG, not ECG")
    assert check_recording("rec.csv", ppg, 50.0, "ppg", stated=False) == []


def test_short_flat_or_empty_recordings_are_not_judged():
    assert assess(np.sin(np.arange(300) / 5), 100.0).bpm is None  # 3 s: too short
    assert assess(np.ones(3000), 100.0).modality is None
    assert recording_problems(np.full(3000, np.nan), 100.0, "ecg").warnings() == []


@pytest.mark.shared
def test_the_released_example_inputs_raise_no_warning(example_inputs_dir):
    files = sorted(example_inputs_dir.glob("*.csv"))
    assert len(files) >= 8
    for f in files:
        modality = "ecg" if "ECG" in f.name else "ppg"
        x = np.loadtxt(f).reshape(-1)
        seen = assess(x, RATE[modality])
        assert 25 <= seen.bpm <= 250 and seen.modality == modality, (f.name, seen)
        assert recording_problems(x, RATE[modality] / 10, modality).rate, f.name
