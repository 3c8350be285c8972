"""``predict mode=head`` (and the default mode): any fine-tuned head applied to recordings gives,
on the windows ``eval`` scores, what ``eval`` gives, named by the shards' label schema.

Tiny fine-tunes of the targets demo (hr: regress, rhythm: 3 classes with attention pooling,
hr_tag: a value every 2 s) and an attention-pooled binary AF model are trained once per module;
each demo file is one 500-sample window at 100 Hz, so the window ``predict`` cuts from a file is
the shard row ``eval`` scores."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from heartgpt.data.labels import LabelSchema
from heartgpt.data.shards import read_shards
from heartgpt.errors import InputError
from heartgpt.eval import evaluate
from heartgpt.heads.applied import NAMES_UNKNOWN, HeadReading
from heartgpt.inference.head_prediction import output_columns, summarise
from heartgpt.inference.prediction import default_mode
from heartgpt.inference.predictor import predict
from heartgpt.predict import compose_config
from heartgpt.screen_af import main as screen_af_main
from heartgpt.training.run import train
from training_helpers import (
    FAST,
    TINY_MODEL,
    build_tiny_demo,
    build_tiny_targets,
    compose_eval,
    compose_train,
)

SPLIT = ["data.val_fraction=0.2", "data.test_fraction=0.3"]
TINY_500 = [*FAST, *TINY_MODEL, "model.block_size=500", "module.pretrained=null", "test=false",
            "trainer.max_steps=4", *SPLIT]
TARGETS = {  # shard set -> the run's overrides
    "hr": ["task=regress"],
    "rhythm": ["task=classify", "module.head.outputs=3", "module.head.pooling=attention"],
    "hr_tag": ["task=tag", "module.head.stride=200"],
}


# ------------------------------------------------------------------------------ fast: summaries

CLASSES = HeadReading("class", ("sinus", "af", "ectopic"), "rhythm", "sequence", 1, "label_schema")
VALUES = HeadReading("value", ("hr_bpm",), "hr_bpm", "sequence", 1, "label_schema")


def test_a_window_row_names_each_class_and_the_predicted_one():
    row = output_columns(CLASSES, np.array([0.2, 0.5, 0.3]))
    assert row == {"prob_sinus": 0.2, "prob_af": 0.5, "prob_ectopic": 0.3, "predicted": "af"}
    assert output_columns(VALUES, np.array([71.5])) == {"hr_bpm": 71.5}


def test_class_fractions_and_mean_probabilities_of_a_recording():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1], [0.5, 0.1, 0.4]])
    row = summarise(CLASSES, probs)
    assert row["fraction_sinus"] == 0.75 and row["fraction_af"] == 0.25
    assert row["fraction_ectopic"] == 0.0
    assert row["mean_prob_af"] == pytest.approx(0.35)
    assert row["mean_prob_ectopic"] == pytest.approx(0.175)
    assert row["predicted"] == "sinus"


def test_mean_median_and_iqr_of_values():
    row = summarise(VALUES, np.array([[60.0], [70.0], [80.0], [90.0], [200.0]]))
    assert row == {"mean_hr_bpm": 100.0, "median_hr_bpm": 80.0, "iqr_hr_bpm": 20.0}


def test_positions_are_summarised_like_windows():
    tagged = np.array([[[60.0], [64.0]], [[70.0], [90.0]]])  # 2 windows of 2 positions
    row = summarise(VALUES, tagged)
    assert row["mean_hr_bpm"] == 71.0 and row["median_hr_bpm"] == 67.0


def test_the_default_mode_is_what_the_checkpoint_is():
    assert default_mode(None, "pretrain", None) == "loss"
    assert default_mode(1, "af", None) == "af"
    assert default_mode(1, "beats", None) == "beats"
    assert default_mode(1, "af", {"kind": "classify", "outputs": 1, "pooling": "last"}) == "af"
    assert default_mode(1, "beats", {"kind": "tag", "outputs": 1, "stride": 1}) == "beats"
    assert default_mode(1, "af", {"kind": "classify", "outputs": 1,
                                  "pooling": "attention"}) == "af"
    assert default_mode(3, "rhythm", {"kind": "classify", "outputs": 3}) == "head"
    assert default_mode(1, "hr", {"kind": "regress", "outputs": 1}) == "head"


# ------------------------------------------------------------------------- slow: tiny fine-tunes


def _run_predict(tmp: Path, *overrides: str) -> dict:
    cfg = compose_config(["trainer.enable_progress_bar=false", f"paths.log_dir={tmp / 'logs'}",
                          *overrides])
    return predict(cfg)


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def targets(tmp_path_factory) -> dict:
    """The targets demo (tiny) and a checkpoint fine-tuned on each of its shard sets."""
    root = tmp_path_factory.mktemp("predict_heads")
    build_tiny_targets(root)
    checkpoints = {}
    for name, overrides in TARGETS.items():
        out = root / "runs" / name
        cfg = compose_train([*TINY_500, *overrides,
                             f"data.shard_dir={root / 'demo' / 'ecg' / name}"],
                            data_dir=root, output_dir=out, log_dir=root / "logs")
        train(cfg)
        (checkpoints[name],) = sorted(out.rglob("*.ckpt"))[-1:]
    return {"root": root, "checkpoints": checkpoints}


def _eval_rows(root: Path, name: str, checkpoint: Path, tmp: Path) -> list[dict[str, str]]:
    cfg = compose_eval([f"checkpoint={checkpoint}", "data.split=test", "logger=none", *SPLIT,
                        *TARGETS[name], f"data.shard_dir={root / 'demo' / 'ecg' / name}"],
                       data_dir=root, output_dir=tmp / "eval", log_dir=tmp / "logs")
    evaluate(cfg)
    return _read(tmp / "eval" / "eval_predictions.csv")


def _predict_test_records(root: Path, name: str, checkpoint: Path, tmp: Path,
                          rows: list[dict[str, str]], *mode: str) -> tuple[dict, dict, object]:
    """predict over the recordings of eval's rows: {record: recording row}, {record: items}."""
    shards = read_shards(root / "demo" / "ecg" / name)
    records = {int(r["row"]): str(shards.record[int(r["row"])]) for r in rows}
    assert all(int(shards.start[i]) == 0 for i in records)  # a file is one window
    files = [str(root / "demo" / "ecg" / "recordings" / f"{rec}.npy") for rec in records.values()]
    _run_predict(tmp, f"checkpoint={checkpoint}", f"inputs=[{','.join(files)}]",
                 "sample_rate=500", f"out_dir={tmp / 'out'}", *mode)
    recordings = {r["recording"]: r for r in _read(tmp / "out" / "recordings.csv")}
    items: dict[str, list[dict[str, str]]] = {}
    for item in _read(tmp / "out" / "windows.csv"):
        items.setdefault(item["recording"], []).append(item)
    return records, recordings, items, shards


@pytest.mark.slow
def test_regression_predicts_what_eval_scores_in_the_labels_units(targets, tmp_path):
    root, ckpt = targets["root"], targets["checkpoints"]["hr"]
    schema = json.dumps(torch.load(ckpt, weights_only=False)["hyper_parameters"]["label_schema"])
    assert LabelSchema.from_dict(json.loads(schema)).names == ("hr_bpm",)
    rows = _eval_rows(root, "hr", ckpt, tmp_path)
    records, recordings, items, _ = _predict_test_records(root, "hr", ckpt, tmp_path, rows)
    for r in rows:  # no mode=: a regression fine-tune is predicted by its head
        (window,) = items[records[int(r["row"])]]
        assert float(window["hr_bpm"]) == pytest.approx(float(r["predicted_hr_bpm"]), abs=1e-5)
        summary = recordings[records[int(r["row"])]]
        assert summary["status"] == "ok" and summary["names_from"] == "label_schema"
        assert float(summary["median_hr_bpm"]) == pytest.approx(float(window["hr_bpm"]))
        assert float(summary["iqr_hr_bpm"]) == 0.0


@pytest.mark.slow
def test_classes_come_from_the_label_schema_and_match_eval(targets, tmp_path):
    root, ckpt = targets["root"], targets["checkpoints"]["rhythm"]
    rows = _eval_rows(root, "rhythm", ckpt, tmp_path)
    records, recordings, items, shards = _predict_test_records(root, "rhythm", ckpt, tmp_path,
                                                               rows, "mode=head")
    classes = shards.meta.label_schema.classes
    assert classes == ("sinus", "af", "ectopic")
    for r in rows:
        (window,) = items[records[int(r["row"])]]
        # eval's are the model's raw probabilities; predict writes them beside the ones its
        # stored temperature calibrates (argmax unchanged)
        probs = [float(window[f"prob_{c}_raw"]) for c in classes]
        np.testing.assert_allclose(probs, [float(r[f"prob_{k}"]) for k in range(3)], atol=1e-5)
        calibrated = np.array([float(window[f"prob_{c}"]) for c in classes])
        assert calibrated.sum() == pytest.approx(1.0) and np.abs(calibrated - probs).max() > 1e-4
        assert window["predicted"] == classes[int(r["predicted"])]
        summary = recordings[records[int(r["row"])]]
        assert float(summary[f"fraction_{window['predicted']}"]) == 1.0


@pytest.mark.slow
def test_a_tag_head_gives_a_value_every_stride_at_its_time(targets, tmp_path):
    root, ckpt = targets["root"], targets["checkpoints"]["hr_tag"]
    rows = _eval_rows(root, "hr_tag", ckpt, tmp_path)
    records, _, items, shards = _predict_test_records(root, "hr_tag", ckpt, tmp_path, rows)
    for r in rows:
        positions = items[records[int(r["row"])]]
        assert [float(p["time_s"]) for p in positions] == [0.0, 2.0]  # every 200 samples at 100 Hz
        assert [float(p["position_end_s"]) for p in positions] == [2.0, 4.0]
        predicted = np.array([float(p["hr_bpm"]) for p in positions])
        target = shards.targets[int(r["row"])].astype(np.float64)
        ok = np.isfinite(target)
        assert int(r["positions"]) == ok.sum()
        scored = np.array([float(v) for v in r["values_hr_bpm"].split()])  # eval's own values
        np.testing.assert_allclose(predicted, scored, rtol=0, atol=1e-5)
        if ok.any():  # eval's per-window error of these very values
            assert np.abs(predicted[ok] - target[ok]).mean() == pytest.approx(float(r["mae"]),
                                                                              abs=1e-4)


@pytest.mark.slow
def test_an_attention_pooled_af_model_is_read_by_its_head(tmp_path):
    """The classic AF shards' windows written out as recordings (their tokens re-tokenise to
    themselves): ``predict`` reads the attention-pooled head as eval does, in ``mode=head`` and
    in ``mode=af`` (its default: an AF model), and so does ``screen_af``."""
    build_tiny_demo(tmp_path / "data")
    shard_dir = tmp_path / "data" / "demo" / "ecg" / "af"
    common = [*FAST, "model.block_size=100", "module.pretrained=null", f"data.shard_dir={shard_dir}",
              "task=af", "module.head.pooling=attention", *SPLIT]
    train(compose_train([*common, "trainer.max_steps=3", "test=false"], data_dir=tmp_path / "data",
                        output_dir=tmp_path / "run", log_dir=tmp_path / "logs"))
    (ckpt,) = sorted((tmp_path / "run").rglob("*.ckpt"))[-1:]
    evaluate(compose_eval([f"checkpoint={ckpt}", "data.split=test", "logger=none",
                           f"data.shard_dir={shard_dir}", "task=af",
                           "module.head.pooling=attention", *SPLIT],
                          data_dir=tmp_path / "data", output_dir=tmp_path / "eval",
                          log_dir=tmp_path / "logs"))
    rows = _read(tmp_path / "eval" / "eval_predictions.csv")[:6]
    shards = read_shards(shard_dir)
    files = []
    for r in rows:
        tokens = shards.tokens[int(r["row"])][:100].astype(np.float64)
        files.append(tmp_path / f"row{r['row']}.npy")
        np.save(files[-1], tokens)
    inputs = f"inputs=[{','.join(map(str, files))}]"
    _run_predict(tmp_path, f"checkpoint={ckpt}", inputs, "sample_rate=100", "mode=head",
                 f"out_dir={tmp_path / 'out'}")
    summary = _run_predict(tmp_path, f"checkpoint={ckpt}", inputs, "sample_rate=100",
                           f"out_dir={tmp_path / 'af'}")
    assert summary["mode"] == "af"
    windows = {w["recording"]: w for w in _read(tmp_path / "out" / "windows.csv")}
    af_windows = {w["recording"]: w for w in _read(tmp_path / "af" / "windows.csv")}
    for r in rows:
        window = windows[f"row{r['row']}"]
        assert float(window["prob_1_raw"]) == pytest.approx(float(r["prob"]), abs=1e-5)
        af_window = af_windows[f"row{r['row']}"]  # the fine-tune stored a temperature:
        assert float(af_window["af_prob_raw"]) == pytest.approx(float(r["prob"]), abs=1e-5)
        assert float(af_window["af_prob"]) != pytest.approx(float(r["prob"]), abs=1e-5)
    assert screen_af_main([str(files[0]), "--checkpoint", str(ckpt), "--sample-rate", "100",
                           "--out-dir", str(tmp_path / "tool")]) == 0
    (tool,) = json.loads(next((tmp_path / "tool").glob("*_af.json")).read_text())["windows"]
    assert tool["af_prob_raw"] == pytest.approx(float(rows[0]["prob"]), abs=1e-5)
    assert tool["af_prob"] == pytest.approx(float(af_windows[f"row{rows[0]['row']}"]["af_prob"]),
                                            abs=1e-6)


@pytest.mark.slow
def test_a_checkpoint_without_a_schema_names_outputs_by_index(targets, tmp_path):
    ckpt = torch.load(targets["checkpoints"]["rhythm"], weights_only=False)
    del ckpt["hyper_parameters"]["label_schema"]
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    rec = next((targets["root"] / "demo" / "ecg" / "recordings").glob("*-00.npy"))
    _run_predict(tmp_path, f"checkpoint={old}", f"inputs={rec}", "sample_rate=500",
                 f"out_dir={tmp_path / 'out'}", "mode=head")
    (row,) = _read(tmp_path / "out" / "recordings.csv")
    assert row["names_from"] == NAMES_UNKNOWN
    assert {"fraction_class_0", "mean_prob_class_2"} <= set(row)
    with pytest.raises(InputError, match="mode=head needs one of our fine-tuned"):
        lm = tmp_path / "lm"
        train(compose_train([*FAST, "task=pretrain", "trainer.max_steps=1", "test=false"],
                            data_dir=build_tiny_demo(tmp_path / "data"), output_dir=lm,
                            log_dir=tmp_path / "logs"))
        (lm_ckpt,) = sorted(lm.rglob("*.ckpt"))[-1:]
        _run_predict(tmp_path, f"checkpoint={lm_ckpt}", f"inputs={rec}", "mode=head",
                     "sample_rate=500", f"out_dir={tmp_path / 'lm_out'}")
    # without mode=: a pre-trained model's next-token loss; a key that mode does not read: refused
    summary = _run_predict(tmp_path, f"checkpoint={lm_ckpt}", f"inputs={rec}", "sample_rate=500",
                           f"out_dir={tmp_path / 'auto_lm'}", "mode.stride=32")
    assert summary["mode"] == "loss" and summary["ok"] == 1
    with pytest.raises(InputError, match="mode.threshold: mode=auto chose mode=loss"):
        _run_predict(tmp_path, f"checkpoint={lm_ckpt}", f"inputs={rec}", "sample_rate=500",
                     f"out_dir={tmp_path / 'auto_bad'}", "mode.threshold=0.3")
