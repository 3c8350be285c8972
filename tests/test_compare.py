"""``python -m heartgpt.compare``: one table of a sweep's runs, each checked against what its
config expects (the demo experiments' ``expect``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from heartgpt.compare import compare, main, markdown


def _run(root: Path, name: str, experiment: str, metrics: dict, expect: dict | None = None,
         overrides: tuple[str, ...] = ()) -> None:
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create([f"experiment={experiment}", *overrides]),
                   run / ".hydra" / "overrides.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": {"runtime": {"choices": {"experiment": experiment}}}}),
                   run / ".hydra" / "hydra.yaml")
    OmegaConf.save(OmegaConf.create({"expect": expect}), run / ".hydra" / "config.yaml")
    (run / "test_metrics.json").write_text(json.dumps({**metrics, "checkpoint": "x.ckpt"}))


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    _run(tmp_path, "0", "demo_hr", {"test/mae": 2.4}, {"test/mae": {"max": 3.0}})
    _run(tmp_path, "1", "demo_rhythm", {"test/auroc": 0.88}, {"test/auroc": {"min": 0.9}})
    _run(tmp_path, "2", "demo_af", {"test/auroc": 0.97, "trainable_params": 49985.0})
    _run(tmp_path, "3", "demo_af_lora", {"test/auroc": 0.955, "trainable_params": 24641.0},
         {"test/auroc": {"at_least": "demo_af", "minus": 0.02},
          "trainable_params": {"below": "demo_af"}}, overrides=("module.lora.rank=8",))
    return tmp_path


def test_each_run_is_checked_against_what_it_expects(sweep):
    rows = {r["experiment"]: r for r in compare(sweep)}
    assert rows["demo_hr"]["met"] == "yes" and rows["demo_hr"]["expected"] == "test/mae <= 3"
    assert rows["demo_rhythm"]["met"] == "NO"  # 0.88 < 0.9
    assert "met" not in rows["demo_af"]  # expects nothing
    lora = rows["demo_af_lora"]
    assert lora["met"] == "yes"
    assert lora["expected"] == ("test/auroc >= demo_af's - 0.02 (0.95); "
                                "trainable_params < demo_af's (49985)")
    table = markdown(list(rows.values()))
    assert table.splitlines()[0].startswith("| run | experiment |")
    assert table.splitlines()[0].endswith("| expected | met |")
    assert (sweep / "comparison.csv").read_text().splitlines()[0].startswith("run,experiment,")


def test_relative_expectations_fail_when_the_run_they_name_is_worse_or_missing(sweep):
    metrics = sweep / "3" / "test_metrics.json"
    metrics.write_text(json.dumps({"test/auroc": 0.94, "trainable_params": 60000.0}))
    lora = {r["experiment"]: r for r in compare(sweep)}["demo_af_lora"]
    assert lora["met"] == "NO"
    import shutil

    shutil.rmtree(sweep / "2")
    lora = {r["experiment"]: r for r in compare(sweep)}["demo_af_lora"]
    assert lora["met"] == "NO" and "0 runs of it in the table" in lora["expected"]


def test_check_exits_nonzero_when_an_expectation_is_not_met(sweep, capsys):
    main([str(sweep)])  # without --check: the table, and a line naming the runs
    assert "expectations not met: 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["--check", str(sweep)])
    assert exit_.value.code == 1
    (sweep / "1" / "test_metrics.json").write_text(json.dumps({"test/auroc": 0.93}))
    main(["--check", str(sweep)])  # all met: returns
