"""``python -m heartgpt.probe``: linear probes of ``predict mode=embed`` output, cross-validated
by subject (``heartgpt.training.probe``)."""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from heartgpt.data.recording import RecordFile
from heartgpt.errors import ConfigError, InputError
from heartgpt.inference.prediction import RecordingPrediction
from heartgpt.inference.prediction_store import PredictionStore
from heartgpt.probe import compose_config
from heartgpt.training.probe import METRICS_FILE, PREDICTIONS_FILE, probe

SUBJECTS, RECORDS, WINDOWS, DIM = 20, 4, 2, 16


def write_embeddings(folder: Path, vectors: dict[str, np.ndarray]) -> None:
    """A ``predict mode=embed`` out_dir of ``{recording: (windows, DIM)}``, written by the store
    ``predict`` writes with (so the probe reads the real layout)."""
    store = PredictionStore(folder, "embed")
    store.claim({"checkpoint": "synthetic.ckpt", "mode": {"name": "embed", "pool": "mean"}})
    records = []
    for name, arr in vectors.items():
        path = folder / "inputs" / f"{name}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        rf = RecordFile(name, path, "npy")
        records.append(rf)
        items = [{"window": i, "start_sample": 100 * i, "end_sample": 100 * i + 100,
                  "status": "ok", "embedding_row": i} for i in range(len(arr))]
        row = {"n_windows": len(arr), "n_embedded": len(arr), "embedding_dim": DIM}
        store.write(rf, 100.0, 2.0, RecordingPrediction(row, items, arr.astype(np.float32)), 0.0)
    store.merge(records, set(), 0.0)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> tuple[Path, Path]:
    """Embeddings of SUBJECTS x RECORDS recordings (WINDOWS windows each) and their labels:
    ``signal`` a linear function of the recording's mean vector, ``noise`` independent of it,
    ``cls`` the sign of another direction (classes ``lo``/``hi``)."""
    root = tmp_path_factory.mktemp("probe")
    rng = np.random.default_rng(0)
    w, v = rng.normal(size=DIM), rng.normal(size=DIM)
    vectors, rows = {}, []
    for s in range(SUBJECTS):
        offset = rng.normal(size=DIM)  # what a subject's recordings share
        for r in range(RECORDS):
            z = offset + rng.normal(size=DIM)
            name = f"s{s:02d}-r{r}"
            vectors[name] = z + 0.3 * rng.normal(size=(WINDOWS, DIM))
            mean = vectors[name].mean(axis=0)
            rows.append([name, f"s{s:02d}", f"{70 + 3 * mean @ w + 0.1 * rng.normal():.4f}",
                         f"{70 + 10 * rng.normal():.4f}", "hi" if mean @ v > 0 else "lo"])
    write_embeddings(root / "emb", vectors)
    labels = root / "labels.csv"
    with open(labels, "w", newline="") as f:
        csv.writer(f).writerows([["record", "subject", "signal", "noise", "cls"], *rows])
    return root / "emb", labels


def run_probe(emb: Path, labels: Path, *overrides: str) -> dict:
    return probe(compose_config([f"predictions={emb}", f"labels={labels}", *overrides]))


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_a_linear_signal_is_found_and_noise_does_not_beat_the_mean(synthetic):
    emb, labels = synthetic
    found = run_probe(emb, labels, "target=signal")
    assert found["kind"] == "regress" and found["folds"] == 5 and found["n_subjects"] == SUBJECTS
    assert found["n_examples"] == SUBJECTS * RECORDS and found["embedding_dim"] == DIM
    assert found["mean"]["r2"] > 0.95
    assert found["mean"]["mae"] < 0.2 * found["mean"]["baseline_mae"]
    assert found["beats_baseline"]
    assert len(found["per_fold"]) == 5 and all(f["mae"] > 0 for f in found["per_fold"])
    noise = run_probe(emb, labels, "target=noise")
    assert not noise["beats_baseline"]
    assert noise["mean"]["mae"] >= noise["mean"]["baseline_mae"]
    assert noise["mean"]["r2"] < 0.0
    # the files: what was printed, and an out-of-fold prediction per recording
    written = json.loads((emb / "probe_signal" / METRICS_FILE).read_text())
    assert written["mean"] == pytest.approx(found["mean"])
    rows = read_csv(emb / "probe_signal" / PREDICTIONS_FILE)
    assert len(rows) == SUBJECTS * RECORDS
    mae = np.mean([abs(float(r["prediction"]) - float(r["target"])) for r in rows])
    assert mae == pytest.approx(np.average([f["mae"] for f in found["per_fold"]],
                                           weights=[f["n_test"] for f in found["per_fold"]]),
                                rel=1e-4)


def test_classes_are_probed_with_auroc_and_a_majority_baseline(synthetic):
    emb, labels = synthetic
    m = run_probe(emb, labels, "target=cls", "C=0.5")
    assert m["kind"] == "classify" and m["classes"] == ["hi", "lo"]
    assert m["mean"]["auroc"] > 0.9 and m["mean"]["balanced_accuracy"] > 0.7
    assert m["mean"]["baseline_balanced_accuracy"] == pytest.approx(0.5)
    assert m["beats_baseline"]
    rows = read_csv(emb / "probe_cls" / PREDICTIONS_FILE)
    assert {r["prediction"] for r in rows} <= {"hi", "lo"}
    for r in rows:
        assert float(r["p_hi"]) + float(r["p_lo"]) == pytest.approx(1.0, abs=1e-5)
        assert r["prediction"] == ("hi" if float(r["p_hi"]) > float(r["p_lo"]) else "lo")
    # a value column stated to be classes is probed as classes
    assert run_probe(emb, labels, "target=cls", "kind=classify")["classes"] == ["hi", "lo"]


def test_features_are_standardised_before_the_penalty(synthetic, tmp_path):
    """Vectors a thousand times smaller carry the same signal: a probe on standardised
    features finds it, where Ridge's penalty on the raw ones would leave almost nothing."""
    emb, labels = synthetic
    with h5py.File(emb / "embeddings.h5") as f:
        names = [n.decode() for n in f["recordings"][:]]
        owner, vectors = f["recording_index"][:], f["embeddings"][:]
    write_embeddings(tmp_path / "small", {n: 1e-3 * vectors[owner == i]
                                          for i, n in enumerate(names)})
    small = run_probe(tmp_path / "small", labels, "target=signal")
    assert small["mean"]["r2"] > 0.95


@pytest.mark.parametrize("unit", ["recording", "window"])
def test_a_subject_never_straddles_folds(synthetic, unit):
    emb, labels = synthetic
    for target in ("signal", "cls"):
        m = run_probe(emb, labels, f"target={target}", f"unit={unit}", "folds=4",
                      f"out_dir={emb}/{unit}_{target}")
        rows = read_csv(emb / f"{unit}_{target}" / PREDICTIONS_FILE)
        assert len(rows) == SUBJECTS * RECORDS * (WINDOWS if unit == "window" else 1)
        folds_of: dict[str, set[str]] = {}
        for r in rows:
            folds_of.setdefault(r["subject"], set()).add(r["fold"])
        assert all(len(f) == 1 for f in folds_of.values()), folds_of
        assert {f for fs in folds_of.values() for f in fs} == {"0", "1", "2", "3"}
        assert sum(f["n_test"] for f in m["per_fold"]) == len(rows)


def test_the_probe_is_deterministic_and_its_folds_do_not_depend_on_the_embeddings(synthetic,
                                                                                  tmp_path):
    emb, labels = synthetic
    first = run_probe(emb, labels, "target=cls", f"out_dir={tmp_path}/a")
    again = run_probe(emb, labels, "target=cls", f"out_dir={tmp_path}/b")
    assert first["per_fold"] == again["per_fold"]
    # another checkpoint's vectors of the same recordings: scored on the same folds
    with h5py.File(emb / "embeddings.h5") as f:
        names = [n.decode() for n in f["recordings"][:]]
    rng = np.random.default_rng(5)
    write_embeddings(tmp_path / "other", {n: rng.normal(size=(WINDOWS, DIM)) for n in names})
    other = run_probe(tmp_path / "other", labels, "target=cls")
    folds = [(r["record"], r["fold"]) for r in read_csv(tmp_path / "a" / PREDICTIONS_FILE)]
    assert folds == [(r["record"], r["fold"])
                     for r in read_csv(tmp_path / "other" / "probe_cls" / PREDICTIONS_FILE)]
    assert other["mean"]["auroc"] < first["mean"]["auroc"]


def test_records_without_labels_are_counted_and_bad_inputs_are_one_clear_error(synthetic,
                                                                                tmp_path):
    emb, labels = synthetic
    rows = read_csv(labels)
    partial = tmp_path / "partial.csv"
    with open(partial, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        kept = [*rows[3:], {"record": "not-embedded", "subject": "x", "signal": "1",
                            "noise": "1", "cls": "hi"}]
        kept[0] = {**kept[0], "signal": ""}  # a blank cell is no label
        w.writerows(kept)
    m = run_probe(emb, partial, "target=signal")
    assert m["recordings_without_label"] == 4 and m["labelled_records_without_embedding"] == 1
    assert m["n_recordings"] == SUBJECTS * RECORDS - 4
    with pytest.raises(InputError, match=r"labels.csv: has no column 'hr_bpm' \(target\)"):
        run_probe(emb, labels, "target=hr_bpm")
    with pytest.raises(InputError, match="has no column 'patient' \\(subject_column\\)"):
        run_probe(emb, labels, "target=signal", "subject_column=patient")
    with pytest.raises(ConfigError, match="^folds: 21 subject-grouped folds need at least 21 "
                                          "subjects with labelled embeddings, there are 20$"):
        run_probe(emb, labels, "target=signal", "folds=21")
    with pytest.raises(InputError, match="'(hi|lo)' is not a number \\(kind=regress"):
        run_probe(emb, labels, "target=cls", "kind=regress")
    with pytest.raises(InputError, match="holds no predict_run.json and embeddings.h5"):
        run_probe(tmp_path, labels, "target=signal")
    one_each = tmp_path / "one_each.csv"  # a recording per subject: R2 of 1 example is undefined
    one_each.write_text("record,subject,signal\n" + "".join(f"s{s:02d}-r0,s{s:02d},{s}\n"
                                                              for s in range(5)))
    m = run_probe(emb, one_each, "target=signal", f"out_dir={tmp_path}/one_each")
    assert all(math.isnan(f["r2"]) for f in m["per_fold"]) and math.isnan(m["mean"]["r2"])
    written = json.loads((tmp_path / "one_each" / METRICS_FILE).read_text())  # strict JSON
    assert written["mean"]["r2"] is None and written["mean"]["mae"] == m["mean"]["mae"]
    other = tmp_path / "other.csv"
    other.write_text("record,subject,signal\nnobody,x,1\n")
    with pytest.raises(InputError, match="no recording of .* has a signal here"):
        run_probe(emb, other, "target=signal")


def test_the_command_ends_bad_input_with_one_line(synthetic, tmp_path, monkeypatch, capsys):
    from heartgpt.probe import main

    emb, labels = synthetic
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["heartgpt.probe", f"predictions={emb}",
                                      f"labels={labels}", "target=nope"])
    with pytest.raises(SystemExit) as e:
        main()
    assert str(e.value).startswith(f"error: {labels}: has no column 'nope' (target)")
    assert not (emb / "probe_nope").exists()  # the run that never started left nothing
    monkeypatch.setattr(sys, "argv", ["heartgpt.probe", f"predictions={emb}",
                                      f"labels={labels}", "target=signal", "folds=0"])
    with pytest.raises(SystemExit, match="^error: folds: 0 must be >= 2$"):
        main()
    monkeypatch.setattr(sys, "argv", ["heartgpt.probe", f"labels={labels}"])
    with pytest.raises(SystemExit, match="^error: predictions: not given"):
        main()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.shared
def test_released_ppg_embeddings_are_deterministic_and_probe_the_demo_heart_rate(weights_dir,
                                                                                 tmp_path):
    """The demo HR target (10 subjects x 3 files, as ``make data`` writes them), embedded twice
    by the released PPG model: identical vectors; a probe of ``hr_bpm`` beats the mean."""
    from heartgpt.data.demo_targets import write_target_recordings
    from heartgpt.inference.predictor import predict
    from heartgpt.predict import compose_config as predict_config

    labels = write_target_recordings(tmp_path / "recordings", "ppg", subjects=10,
                                     records_per_subject=3, seed=0)
    vectors = []
    for out in ("a", "b"):
        summary = predict(predict_config([
            "mode=embed", "checkpoint=PPGPT_500k_iters.zip", f"paths.weights_dir={weights_dir}",
            f"inputs={tmp_path / 'recordings'}/*.npy", "sample_rate=125",
            f"out_dir={tmp_path / out}", "trainer.enable_progress_bar=false"]))
        assert summary["ok"] == 30
        with h5py.File(tmp_path / out / "embeddings.h5") as f:
            vectors.append((f["embeddings"][:], [n.decode() for n in f["recordings"][:]]))
    assert vectors[0][1] == vectors[1][1]
    assert vectors[0][0].shape == (30, 64)
    assert np.array_equal(vectors[0][0], vectors[1][0])  # bit for bit
    m = run_probe(tmp_path / "a", labels, "target=hr_bpm")
    assert m["kind"] == "regress" and m["n_subjects"] == 10 and m["recordings_without_label"] == 0
    assert m["mean"]["mae"] < m["mean"]["baseline_mae"]
    assert m["beats_baseline"]
