"""The benchmark scripts (bench/) run end to end in their tiny modes; nothing about speed."""

from __future__ import annotations

import copy
import importlib
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

# No top-level torch import: the interleaving tests' spawned workers import this module to
# find their fake workloads, and should start in a fraction of a second.

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = ("bench_train", "bench_generate", "bench_data", "bench_prepare", "bench_inference",
           "bench_predict", "bench_scale")
METRIC_KEYS = {"key", "what", "ours", "unit", "ref", "ratio", "target", "met", "note"}


@pytest.fixture(autouse=True)
def _bench_importable(monkeypatch):
    """``bench`` lives beside ``src``, not in the installed package; one thread for speed."""
    import torch

    monkeypatch.syspath_prepend(str(REPO))
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Callable[[str], tuple[dict, Path]]:
    """``tiny_run(script)``: its ``main(["--tiny", "--inline", "--json", ...])`` result and
    json file, run once per module (the section test and the markdown test share it)."""
    runs: dict[str, tuple[dict, Path]] = {}
    folder = tmp_path_factory.mktemp("tiny")

    def run(script: str) -> tuple[dict, Path]:
        if script not in runs:
            out = folder / f"{script}.json"
            runs[script] = importlib.import_module(f"bench.{script}").main(
                ["--tiny", "--inline", "--json", str(out)]), out
        return copy.deepcopy(runs[script][0]), runs[script][1]

    return run


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_tiny_mode_runs_and_writes_its_section(script, tiny_run):
    result, out = tiny_run(script)
    assert result["rows"] and result["metrics"]
    assert json.loads(out.read_text())["name"] == result["name"]
    for m in result["metrics"]:
        assert set(m) >= METRIC_KEYS, m
        if m["ours"] is None:  # a row this machine cannot measure says so
            assert m["note"].startswith("not measured"), m
        else:
            assert m["ours"] > 0
    import torch

    if script == "bench_train" and not torch.cuda.is_available():  # the CUDA rows say why not
        cuda = [m for m in result["metrics"] if "_ours_cuda" in m["key"]]
        assert {m["key"].rsplit("_ours_", 1)[1] for m in cuda} == {"cuda", "cuda_bf16",
                                                                   "cuda_compile"}
        assert all(m["ours"] is None for m in cuda)


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


def test_results_markdown_states_machine_metrics_and_misses(tiny_run):
    import torch
    from bench.common import machine, metric, spread
    from bench.run_all import markdown

    section, _ = tiny_run("bench_prepare")
    section["metrics"].append(metric("x", "a made-up speed", 1.0, "tok/s", ref=2.0, target=3.0,
                                     note="measured cause"))
    section["metrics"].append(metric(
        "y", "a spread speed", 1.0, "tok/s", ref=2.0,
        spread=spread([2.0, 1.0, 5.0, 3.0, 2.5], {"rejected": 1, "all_disturbed": False})))
    text = markdown({"machine": machine(), "seconds": 1.0, "sections": [section]})
    assert f"torch {torch.__version__}" in text and "cores" in text
    assert "prepare, 10-s CSV recordings, 1 worker(s): records/s" in text
    assert "**Missed: a made-up speed**" in text and "measured cause" in text
    # a ratio states its spread; value-only rows (prepare) the spread of the value
    assert "| 2.5x (1-5, 5 rounds, 1 rejected) |" in text
    assert not [line for line in text.splitlines()
                if line.startswith("| prepare") and " rounds, " not in line]
    assert "rounds rejected" in text  # the Load line


# ------------------------------------------------------- the interleaving helper (fakes)

def _logging_unit(name: str, log: str, sleep: float = 0.0):
    """A fake side: each unit appends its name to ``log`` (the real order of execution)."""
    calls = [0]

    def unit() -> int:
        calls[0] += 1
        with open(log, "a") as f:
            f.write(name + "\n")
        time.sleep(sleep)
        return calls[0]

    return unit, {"name": name}


def _alloc_unit(mb: int):
    """A fake side holding ``mb`` MB of written (resident) memory."""
    block = b"\x01" * (mb * 2**20)

    def unit() -> int:
        return len(block)

    return unit


def _spin_second_call(spin: float):
    """Sleeps briefly, except on its second call, where it spins ``spin`` seconds of CPU."""
    calls = [0]

    def unit() -> str:
        calls[0] += 1
        if calls[0] != 2:
            time.sleep(0.05)
            return "slept"
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < spin:
            pass
        return "spun"

    return unit


class _FakeMeter:
    """Reports other processes' CPU time ``foreign[i]`` during the i-th unit (default 0)."""

    n_cpus = 2

    def __init__(self, foreign: dict[int, float]):
        self.foreign, self.units = foreign, 0

    def read(self):
        return 0

    def foreign_s(self, start, end):
        self.units += 1
        return self.foreign.get(self.units, 0.0)


def test_interleave_runs_a_b_a_b_in_spawned_workers_and_reports_median_range(tmp_path):
    from bench.common import interleave, round_ratios

    log = tmp_path / "order.txt"
    result = interleave({"A": (_logging_unit, dict(name="A", log=str(log), sleep=0.02)),
                         "B": (_logging_unit, dict(name="B", log=str(log), sleep=0.06))},
                        5, meter=_FakeMeter({}), log=None)
    assert log.read_text().split() == ["A", "B"] * 5  # as the workers ran them
    assert result["order"] == ["A", "B"] * 5 and result["rejected"] == 0
    assert result["sides"]["A"]["info"]["name"] == "A"
    assert [r["out"]["A"] for r in result["rounds"]] == [1, 2, 3, 4, 5]
    assert len(result["sides"]["B"]["seconds"]) == 5
    sp = round_ratios(result, lambda r: r["seconds"]["B"] / r["seconds"]["A"])
    ratios = sorted(r["seconds"]["B"] / r["seconds"]["A"] for r in result["rounds"])
    assert (sp["median"], sp["min"], sp["max"], sp["n"]) == (ratios[2], ratios[0], ratios[-1], 5)
    assert 1.5 < sp["median"] < 4.5  # 60 ms against 20 ms sleeps


def test_spread_median_and_range():
    from bench.common import describe_spread, spread

    sp = spread([3.0, 1.0, 2.0, 5.0, 4.0], {"rejected": 1, "all_disturbed": False})
    assert (sp["median"], sp["min"], sp["max"], sp["n"], sp["rejected"]) == (3, 1, 5, 5, 1)
    assert spread([1.0, 4.0])["median"] == 2.5
    assert describe_spread(sp) == "(1-5, 5 rounds, 1 rejected)"


def test_interleave_rejects_and_reruns_a_disturbed_round():
    from bench.common import interleave

    # the third unit (round 2, side A) sees 1 s of other processes' CPU: round 2 is re-run
    result = interleave({"A": (_spin_second_call, dict(spin=0.0)),
                         "B": (_spin_second_call, dict(spin=0.0))},
                        3, inline=True, meter=_FakeMeter({3: 1.0}), log=None)
    assert result["order"] == ["A", "B"] * 4
    assert result["rejected"] == 1 and len(result["rounds"]) == 3
    assert [r["disturbed"] for r in result["rounds"]] == [False] * 3
    assert len(result["rejected_rounds"]) == 1 and result["rejected_rounds"][0]["disturbed"]
    # always disturbed: stops after rounds + max_rejected tries and says so
    result = interleave({"A": (_spin_second_call, dict(spin=0.0))}, 2, inline=True,
                        max_rejected=1, meter=_FakeMeter({i: 1.0 for i in range(1, 10)}),
                        log=None)
    assert result["order"] == ["A"] * 3 and result["all_disturbed"] and result["rejected"] == 3


def test_cpu_meter_sees_a_busy_process_outside_the_benchmark_as_a_disturbance():
    """With the benchmark's tree rooted elsewhere, this process's own spin is 'another process'."""
    from bench.common import CpuMeter, interleave

    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        meter = CpuMeter(root=sleeper.pid)
        start = meter.read()
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 0.4:
            pass
        assert meter.foreign_s(start, meter.read()) >= 0.2
        # in interleave: the round whose unit spun (round 2) is rejected, whatever else ran
        result = interleave({"A": (_spin_second_call, dict(spin=0.4))}, 3, inline=True,
                            reject_above=0.2, max_rejected=10, meter=meter, log=None)
        assert "spun" in [r["out"]["A"] for r in result["rejected_rounds"]] or (
            result["all_disturbed"])
        assert "spun" not in [r["out"]["A"] for r in result["rounds"]] or result["all_disturbed"]
    finally:
        sleeper.kill()
        sleeper.wait()


def test_worker_peak_memory_is_its_own_not_the_parents():
    from bench.common import interleave

    parent_block = b"\x01" * (500 * 2**20)  # resident in the parent before spawning
    result = interleave({"big": (_alloc_unit, dict(mb=200)), "small": (_alloc_unit, dict(mb=0))},
                        1, meter=_FakeMeter({}), log=None)
    del parent_block
    big, small = result["sides"]["big"]["peak_mb"], result["sides"]["small"]["peak_mb"]
    assert big >= 200 and big - small >= 190, (big, small)
    assert small < 400 and big < small + 300, (big, small)  # no 500 MB from the parent


@pytest.mark.slow
def test_make_bench_tiny_end_to_end(tmp_path):
    """``python -m bench --tiny``: scripts in their own processes, measured in spawned children,
    into one results.json and RESULTS.md (two scripts: every script's tiny mode runs above)."""
    def bench(*args: str) -> None:
        proc = subprocess.run([sys.executable, "-m", "bench", "--tiny", "--out-dir", str(tmp_path),
                               *args], cwd=REPO, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]

    bench("--only", "bench_prepare", "bench_predict")
    results = json.loads((tmp_path / "results.json").read_text())
    assert [s["name"] for s in results["sections"]] == ["prepare", "predict"]
    assert all(s["metrics"] for s in results["sections"])
    assert "| metric | ours |" in (tmp_path / "RESULTS.md").read_text()
    bench("--only", "bench_prepare", "--update")  # one section again, the other kept
    updated = json.loads((tmp_path / "results.json").read_text())
    assert [s["name"] for s in updated["sections"]] == ["prepare", "predict"]
    assert updated["sections"][1] == results["sections"][1]  # predict kept as it was
    assert updated["sections"][0]["seconds"] != results["sections"][0]["seconds"]
    assert "Re-run since (`python -m bench --only ... --update`): prepare on" in (
        tmp_path / "RESULTS.md").read_text()
