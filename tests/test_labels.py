"""Labels from the user's data: ``labels_csv`` with named columns and classes, per-position
values from sidecar files, the schema the shards record, and what a bad labels file says."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from heartgpt.conf import CONF_DIR
from hydra import compose, initialize_config_dir

from heartgpt.data.labels import LabelSchema, LabelsError, read_labels_csv, read_sidecar_values
from heartgpt.data.shards import ShardMeta, read_manifest, read_shards
from heartgpt.errors import ConfigError
from heartgpt.training.preparation import prepare

FS = 100.0  # Hz of the test recordings: the ECG token rate, so samples are tokens


def _cfg(tmp_path: Path, *overrides: str):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("prepare", overrides=[
            f"paths.data_dir={tmp_path / 'data'}", "progress=false", "segment.samples=200",
            f"input={tmp_path / 'raw'}", f"sample_rate={FS}", f"out_dir={tmp_path / 'out'}",
            "num_workers=1", *overrides])


def _records(tmp_path: Path, names: list[str], seconds: float = 4.0) -> None:
    raw = tmp_path / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * FS)) / FS
    for i, name in enumerate(names):
        np.save(raw / f"{name}.npy", np.sin(2 * np.pi * (1 + 0.1 * i) * t) ** 9 + 0.01 * t)


def _labels(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# ---------------------------------------------------------------- labels_csv


def test_several_value_columns_become_one_label_row_each(tmp_path):
    _records(tmp_path, ["a", "b", "c"])
    labels = _labels(tmp_path / "bp.csv", ["record", "subject", "sbp", "dbp"],
                     [["a", "s1", "120", "80"], ["b", "s1", "131.5", "85"], ["c", "s2", "110", "70"]])
    prepare(_cfg(tmp_path, "label_kind=sequence", f"labels_csv={labels}",
                 "label_columns=[sbp,dbp]", "label_type=value"))
    data = read_shards(tmp_path / "out")
    schema = data.meta.label_schema
    assert schema == LabelSchema(names=("sbp", "dbp"), kind="value")
    by_record = {r: data.label[i] for i, r in enumerate(data.record)}
    np.testing.assert_array_equal(by_record["b"], [131.5, 85.0])  # both segments of b
    assert data.label.shape == (6, 2)  # 3 records x 2 segments of 200 tokens
    assert read_manifest(tmp_path / "out").label_counts is None  # values are not counted


def test_class_names_are_mapped_to_indices_and_the_mapping_is_stored(tmp_path):
    _records(tmp_path, ["a", "b", "c"])
    labels = _labels(tmp_path / "rhythm.csv", ["record", "subject", "rhythm"],
                     [["a", "s1", "ectopic"], ["b", "s2", "sinus"], ["c", "s3", "af"]])
    prepare(_cfg(tmp_path, "label_kind=sequence", f"labels_csv={labels}",
                 "label_columns=[rhythm]", "classes=[sinus,af,ectopic]"))
    data = read_shards(tmp_path / "out")
    assert data.meta.label_schema.classes == ("sinus", "af", "ectopic")
    assert {r: int(data.label[i]) for i, r in enumerate(data.record)} == {"a": 2, "b": 0, "c": 1}
    assert read_manifest(tmp_path / "out").label_counts == {"0": 2, "1": 2, "2": 2}


def test_integer_codes_without_a_class_list_are_sorted_numerically(tmp_path):
    path = _labels(tmp_path / "codes.csv", ["record", "dx"],
                   [["a", "10"], ["b", "2"], ["c", "1.0"], ["d", ""]])
    labels, schema = read_labels_csv(path, ["dx"], "class")
    assert schema.classes == ("1.0", "2", "10")
    assert {k: v[1] for k, v in labels.items()} == {"a": (2.0,), "b": (1.0,), "c": (0.0,), "d": None}
    # codes match their class numerically: "1.0" is class "1" of an AF list
    binary = _labels(tmp_path / "af.csv", ["record", "af"], [["a", "1.0"], ["b", "0"]])
    labels, schema = read_labels_csv(binary, ["af"], "class", ["0", "1"])
    assert {k: v[1] for k, v in labels.items()} == {"a": (1.0,), "b": (0.0,)}


def test_a_record_without_labels_is_a_reported_skip_naming_it(tmp_path):
    _records(tmp_path, ["a", "b", "orphan"])
    labels = _labels(tmp_path / "hr.csv", ["record", "hr"], [["a", "61"], ["b", ""]])
    summary = prepare(_cfg(tmp_path, "label_kind=sequence", f"labels_csv={labels}",
                           "label_columns=[hr]", "label_type=value"))
    skipped = {s["record"]: s["reason"] for s in summary.skipped}
    assert skipped == {"b": "no label", "orphan": "no label"}
    assert set(read_shards(tmp_path / "out").record) == {"a"}


@pytest.mark.parametrize(("rows", "overrides", "message"), [
    ([["a", "61"], ["b", "sixty"]], ["label_type=value"],
     "line 3, record 'b': hr='sixty' is not a number"),
    ([["a", "sinus"], ["b", "flutter"]], ["classes=[sinus,af]"],
     "line 3, record 'b': hr='flutter' is not one of the classes ['sinus', 'af']"),
    ([["a", "61"]], ["label_columns=[sbp]"], "no column 'sbp' (label_columns)"),
    ([[f"r{i}", str(50 + i * 0.5)] for i in range(150)], [],
     "150 distinct values, too many for classes: continuous targets need label_type=value"),
])
def test_a_bad_labels_file_is_a_one_line_error_naming_the_record(tmp_path, rows, overrides, message):
    _records(tmp_path, ["a", "b"])
    labels = _labels(tmp_path / "labels.csv", ["record", "hr"], rows)
    cfg = _cfg(tmp_path, "label_kind=sequence", f"labels_csv={labels}", "label_columns=[hr]",
               *overrides)
    with pytest.raises(ConfigError) as err:
        prepare(cfg)
    assert str(labels) in str(err.value) and message in str(err.value)
    assert not (tmp_path / "out").exists()  # nothing written


# ---------------------------------------------------------------- per-position values


def test_sidecar_values_become_targets_at_their_stride(tmp_path):
    _records(tmp_path, ["a", "b"], seconds=6.0)
    raw = tmp_path / "raw"
    # one value per 1 s = 100 tokens; a blank is "no value"; b has fewer values than seconds
    _labels(raw / "a_hr.csv", ["hr_bpm"], [["60"], ["61"], [""], ["63"], ["64"], ["65"]])
    _labels(raw / "b_hr.csv", ["hr_bpm"], [["70"], ["71"], ["72"]])
    prepare(_cfg(tmp_path, "label_kind=token", "targets.sidecar_suffix=_hr.csv",
                 "targets.rate=1.0", "targets.name=hr_bpm", "segment.samples=300",
                 "segment.stride_samples=200"))
    data = read_shards(tmp_path / "out")
    assert data.meta.label_schema == LabelSchema(names=("hr_bpm",), kind="value", stride=100)
    rows = {(r, int(s)): data.targets[i] for i, (r, s) in enumerate(zip(data.record, data.start, strict=True))}
    np.testing.assert_array_equal(rows[("a", 0)], [60, 61, np.nan])
    np.testing.assert_array_equal(rows[("a", 200)], [np.nan, 63, 64])
    np.testing.assert_array_equal(rows[("b", 200)], [72, np.nan, np.nan])  # past its values
    assert data.targets.dtype == np.float32


def test_sidecar_values_need_a_segment_stride_of_whole_values(tmp_path):
    _records(tmp_path, ["a"])
    cfg = _cfg(tmp_path, "label_kind=token", "targets.sidecar_suffix=_hr.csv", "targets.rate=0.5",
               "segment.stride_samples=150")
    with pytest.raises(ConfigError, match="stride 150 must be a multiple of the 200 tokens"):
        prepare(cfg)
    cfg = _cfg(tmp_path, "label_kind=token", "targets.sidecar_suffix=_hr.csv", "targets.rate=0.3")
    with pytest.raises(ConfigError, match="does not divide"):
        prepare(cfg)


def test_a_bad_sidecar_value_names_its_file_and_line(tmp_path):
    path = _labels(tmp_path / "x_hr.csv", ["hr"], [["60"], ["n/a"]])
    with pytest.raises(LabelsError, match=r"x_hr.csv, line 3: 'n/a' is not a number"):
        read_sidecar_values(path, None)
    classes = _labels(tmp_path / "x_rhythm.csv", ["rhythm"], [["sinus"], ["af"], ["sinus"]])
    np.testing.assert_array_equal(read_sidecar_values(classes, None, ["sinus", "af"]), [0, 1, 0])


# ---------------------------------------------------------------- the schema in the shards


def test_shards_without_a_schema_read_as_the_binary_labels_they_held():
    meta = ShardMeta(modality="ecg", sample_rate=100.0, vocab_size=101, segment_length=500,
                     label_kind="sequence", source="x")
    assert meta.label_schema == LabelSchema(("label",), "class", ("0", "1"))
    assert "labels" not in meta.to_attrs()  # written as before: byte-identical old sets
    token = ShardMeta(modality="ecg", sample_rate=100.0, vocab_size=101, segment_length=500,
                      label_kind="token", source="x")
    assert token.label_schema.stride == 1 and token.targets_shape(4) == (4, 500)
