"""The benchmark scripts (bench/) run end to end in their tiny modes; nothing about speed."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = ("bench_train", "bench_generate", "bench_data", "bench_prepare", "bench_inference")
METRIC_KEYS = {"key", "what", "ours", "unit", "ref", "ratio", "target", "met", "note"}


@pytest.fixture(autouse=True)
def _bench_importable(monkeypatch):
    """``bench`` lives beside ``src``, not in the installed package; one thread for speed."""
    monkeypatch.syspath_prepend(str(REPO))
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_tiny_mode_runs_and_writes_its_section(script, tmp_path):
    out = tmp_path / f"{script}.json"
    result = importlib.import_module(f"bench.{script}").main(
        ["--tiny", "--inline", "--json", str(out)])
    assert result["rows"] and result["metrics"]
    assert json.loads(out.read_text())["name"] == result["name"]
    for m in result["metrics"]:
        assert set(m) >= METRIC_KEYS, m
        assert m["ours"] > 0


def test_metric_ratio_and_target_directions():
    from bench.common import metric

    speed = metric("s", "speed", 30.0, "tok/s", ref=10.0, target=3.0)
    assert speed["ratio"] == 3.0 and speed["met"] is True
    memory = metric("m", "memory", 4.0, "MB", ref=10.0, target=1 / 3, lower_is_better=True)
    assert memory["met"] is False
    absolute = metric("a", "memory", 4000.0, "MB", target=5000.0, target_on="value",
                      lower_is_better=True)
    assert absolute["ratio"] is None and absolute["met"] is True
    untargeted = metric("u", "records/s", 5.0, "records/s")
    assert untargeted["met"] is None


def test_results_markdown_states_machine_metrics_and_misses(tmp_path):
    from bench import bench_prepare
    from bench.common import machine, metric
    from bench.run_all import markdown

    section = bench_prepare.main(["--tiny", "--inline"])
    section["metrics"].append(metric("x", "a made-up speed", 1.0, "tok/s", ref=2.0, target=3.0,
                                     note="measured cause"))
    text = markdown({"machine": machine(), "seconds": 1.0, "sections": [section]})
    assert f"torch {torch.__version__}" in text and "cores" in text
    assert "prepare, 10-s CSV recordings, 1 worker(s): records/s" in text
    assert "**Missed: a made-up speed**" in text and "measured cause" in text


@pytest.mark.slow
def test_make_bench_tiny_end_to_end(tmp_path):
    """``python -m bench --tiny``: every script in its own process, measured in spawned children."""
    proc = subprocess.run([sys.executable, "-m", "bench", "--tiny", "--out-dir", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert [s["name"] for s in results["sections"]] == [
        "train", "generate", "data", "prepare", "inference"]
    assert all(s["metrics"] for s in results["sections"])
    assert "| metric | ours |" in (tmp_path / "RESULTS.md").read_text()
