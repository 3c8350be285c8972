"""The bad-input battery of issue 16: what a careless or hostile user feeds every command.

Each case is a command (``python -m heartgpt.<module> ...``), the exit status it must end with,
the words its one error line (or warning) must hold, and the files it must leave byte for
byte as they were (shards, checkpoints, a previous prepare's summary). The commands run one
after another in one interpreter (``tests/command_runner.py``, the ~6 s import of torch paid
once); each test then checks one case. A known failure must be one ``error:`` line, never a
traceback, and a run that never started must leave no run directory behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from heartgpt.data.demo import NATIVE_RATE, draw_subjects, synthesize
from heartgpt.data.tokenizer import resample
from heartgpt.model.safetensors_file import SAFETENSORS_FORMAT, save_safetensors
from tiny import tiny_gpt
from training_helpers import TINY_MODEL

REPO = Path(__file__).resolve().parents[1]
RUNNER = REPO / "tests" / "command_runner.py"
RATE = {"ecg": 100.0, "ppg": 50.0}
pytestmark = pytest.mark.xdist_group("bad_inputs")  # one battery run, on one worker


class Payload:
    """Unpickling it makes a folder: the stand-in for arbitrary code in a crafted .ckpt."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


@dataclass
class Case:
    """One bad input: the command, its exit status, the words of its message, what it must
    leave untouched (paths relative to the battery folder) and what must not appear."""

    name: str
    argv: list[str]
    exit: int
    words: list[str]
    unchanged: list[str] = field(default_factory=list)
    absent: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)


def _recording(modality: str, index: int, seconds: float = 40.0) -> np.ndarray:
    """A SYNTHETIC recording at the modality rate (sinus rhythm subjects of the demo)."""
    subject = [s for s in draw_subjects(modality, 8, 0) if not s.af][index]
    rec = synthesize(subject, modality, seconds)
    return resample(rec.signal, NATIVE_RATE[modality], RATE[modality])


def _write_csv(path: Path, x: np.ndarray, decimal_comma: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{v:.4f}" for v in x]
    if decimal_comma:
        lines = [v.replace(".", ",") for v in lines]
    path.write_text("\n".join(lines) + "\n")
    return path


def _tree_digest(path: Path) -> dict[str, str]:
    """sha256 of every file under ``path`` (or of ``path`` itself)."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _make_inputs(root: Path) -> None:
    """The bad (and good) inputs of every case under ``root``."""
    ppg, ecg = _recording("ppg", 0), _recording("ecg", 0)
    # prepare: decimal commas beside a good recording; the same numbers read with csv_decimal=,
    _write_csv(root / "decimal" / "good.csv", _recording("ppg", 1))
    _write_csv(root / "decimal" / "comma.csv", ppg, decimal_comma=True)
    (root / "semicolon").mkdir()
    (root / "semicolon" / "two_channels.csv").write_text(
        "".join(f"{a:.4f};{b:.4f}\n".replace(".", ",") for a, b in zip(ppg, ppg[::-1], strict=True)))
    _write_csv(root / "comma_only" / "comma.csv", ppg, decimal_comma=True)
    _write_csv(root / "dot_only" / "dot.csv", ppg)
    # values at the edge of float64
    huge = np.where(np.arange(ppg.size) % 2 == 0, 1.7e308, -1.7e308)
    (root / "huge").mkdir()
    (root / "huge" / "huge.csv").write_text("\n".join(f"{v:.17g}" for v in huge) + "\n")
    _write_csv(root / "huge" / "good.csv", _recording("ppg", 1))
    # a record with fs=0 and one whose rate puts filter.high_hz above Nyquist, beside good ones
    for name, fs in (("good_a", 125.0), ("good_b", 125.0), ("zero_rate", 0.0), ("low_rate", 20.0)):
        (root / "rates").mkdir(exist_ok=True)
        np.savez(root / "rates" / f"{name}.npz", signal=resample(ppg, 50, fs or 125), fs=fs)
    # a good shard set (made by the fixture), then a run whose every record is skipped into it
    for i in range(3):
        _write_csv(root / "ecg_records" / f"r{i}.csv", _recording("ecg", i))
    _write_csv(root / "all_bad" / "flat.csv", np.ones(3000))
    _write_csv(root / "all_bad" / "short.csv", ecg[:50])
    # a rate given 10x too low (PPG at 50 Hz declared as 5 Hz)
    _write_csv(root / "wrong_rate" / "ppg.csv", ppg)
    # recordings for the tools
    _write_csv(root / "ppg.csv", ppg)
    _write_csv(root / "ppg_comma.csv", ppg, decimal_comma=True)
    # checkpoints: tiny models carrying modality and task
    weights = root / "weights"
    weights.mkdir()
    save_safetensors(tiny_gpt(vocab_size=101, out_features=1), weights / "ecg_af.safetensors",
                     modality="ecg", task="af")
    save_safetensors(tiny_gpt(vocab_size=102, out_features=1), weights / "ppg_af.safetensors",
                     modality="ppg", task="af")
    save_safetensors(tiny_gpt(vocab_size=101, out_features=1), weights / "ecg_beats.safetensors",
                     modality="ecg", task="beats")
    model = tiny_gpt(vocab_size=101)
    crafted = dict(model.config.to_dict(), n_embd=2_000_000, n_layer=1000)  # ~824 GB asked for
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(weights / "crafted.safetensors"),
              metadata={"format": SAFETENSORS_FORMAT, "config": json.dumps(crafted),
                        "modality": "ecg", "task": "pretrain"})
    torch.save({"state_dict": {}, "x": Payload(str(root / "payload_ran"))}, weights / "evil.ckpt")
    (root / "old_run" / "checkpoints").mkdir(parents=True)
    (root / "old_run" / "checkpoints" / "last.ckpt").write_bytes(b"")  # its save was killed


def _cases(root: Path) -> list[Case]:
    """Every case, its paths under ``root``."""
    prep = ["num_workers=1", "progress=false", "segment.samples=500"]
    train = ["-m", "heartgpt.train", *TINY_MODEL, "debug=fast", "logger=none",
             f"paths.log_dir={root}/runs", f"paths.data_dir={root}/data"]
    pretrain_data = [f"data.shard_dir={root}/shards/ecg", "data.num_workers=0",
                     "data.persistent_workers=false"]
    tool = ["-m", "heartgpt.screen_af", "--out-dir", str(root / "tool_out")]
    return [
        Case("decimal commas: skipped with the reason, the good record kept",
             ["-m", "heartgpt.prepare", "modality=ppg", "sample_rate=50", f"input={root}/decimal",
              f"out_dir={root}/shards/decimal", *prep],
             0, ["comma", "decimal comma", "csv_decimal"]),
        Case("semicolons and decimal commas: refused, nothing written",
             ["-m", "heartgpt.prepare", "modality=ppg", "sample_rate=50",
              f"input={root}/semicolon", f"out_dir={root}/shards/semicolon", *prep],
             1, ["error:", "no segment could be written", "decimal comma"]),
        Case("decimal commas read with csv_decimal=','",
             ["-m", "heartgpt.prepare", "modality=ppg", "sample_rate=50",
              f"input={root}/comma_only", f"out_dir={root}/shards/comma_read", 'csv_decimal=","',
              *prep], 0, []),
        Case("the same numbers with decimal points (the reference for the case above)",
             ["-m", "heartgpt.prepare", "modality=ppg", "sample_rate=50",
              f"input={root}/dot_only", f"out_dir={root}/shards/dot_read", *prep], 0, []),
        Case("values at the edge of float64: the record skipped",
             ["-m", "heartgpt.prepare", "modality=ppg", "sample_rate=50", f"input={root}/huge",
              f"out_dir={root}/shards/huge", *prep],
             0, ["huge", "values too large"]),
        Case("fs=0 and a filter above Nyquist: those records skipped, the good ones written",
             ["-m", "heartgpt.prepare", "modality=ppg", f"input={root}/rates",
              f"out_dir={root}/shards/rates", "filter.low_hz=0.5", "filter.high_hz=15", *prep],
             0, ["zero_rate", "not a positive number", "low_rate", "Nyquist"]),
        Case("an all-skipped run over a good set: one line, the set and its summary untouched",
             ["-m", "heartgpt.prepare", "modality=ecg", "sample_rate=100",
              f"input={root}/all_bad", f"out_dir={root}/shards/ecg", *prep],
             1, ["error:", "no segment could be written", "unchanged"],
             unchanged=["shards/ecg"]),
        Case("a rate 10x too low in prepare: kept, with a warning",
             ["-m", "heartgpt.prepare", "modality=ppg", "sample_rate=5",
              f"input={root}/wrong_rate", f"out_dir={root}/shards/wrong_rate", *prep],
             0, ["warning", "is the sampling rate right?"]),
        Case("a part outside nparts: one line naming the key",
             ["-m", "heartgpt.prepare", "modality=ecg", "sample_rate=100",
              f"input={root}/ecg_records", f"out_dir={root}/shards/parts", "part=2", "nparts=2",
              *prep],
             1, ["error:", "part:", "0..1"], absent=["shards/parts"]),
        Case("merge where no parts were prepared: one line, the set there untouched",
             ["-m", "heartgpt.prepare", f"out_dir={root}/shards/ecg", "merge=true"],
             1, ["error:", "no part-K-of-N folders", "part=K nparts=N"],
             unchanged=["shards/ecg"]),
        Case("a flipped token with checksums off: one line naming shard and row",
             [*train, *pretrain_data, "data.verify_checksums=false",
              f"data.shard_dir={root}/shards/flipped"],
             1, ["error:", "shard-00000.h5", "row", "outside the vocabulary"],
             unchanged=["shards/flipped"], absent=["runs/pretrain_ecg"]),
        Case("trainer.max_steps=abc: the key named, no run directory",
             [*train, *pretrain_data, "trainer.max_steps=abc"],
             1, ["error: trainer.max_steps:", "'abc' is not an integer"],
             absent=["runs/pretrain_ecg"]),
        Case("a crafted .ckpt with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD set: refused, nothing run",
             [*train, *pretrain_data, f"ckpt_path={root}/weights/evil.ckpt"],
             1, ["error:", "evil.ckpt", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"],
             unchanged=["weights"], absent=["payload_ran"],
             env={"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}),
        Case("an empty last.ckpt to resume from",
             [*train, *pretrain_data, f"ckpt_path={root}/old_run/checkpoints/last.ckpt"],
             1, ["error:", "old_run/checkpoints/last.ckpt", "is empty (0 bytes)"],
             unchanged=["old_run"], absent=["runs/pretrain_ecg"]),
        Case("a beat model as the pretrained weights of an AF fine-tune",
             [*train, "task=af", f"data.shard_dir={root}/shards/ecg",
              f"module.pretrained={root}/weights/ecg_beats.safetensors"],
             1, ["ecg_beats.safetensors", "is fine-tuned for beats", "cannot start task af"],
             unchanged=["weights"],
             absent=["runs/af_ecg"]),
        Case("a crafted safetensors config (824 GB): refused before anything is allocated",
             [*tool, str(root / "ppg.csv"), "-c", str(root / "weights" / "crafted.safetensors")],
             1, ["error:", "crafted.safetensors", "n_embd=2000000"], unchanged=["weights"]),
        Case("a rate 10x too low in a tool: a warning",
             [*tool, str(root / "ppg.csv"), "-c", str(root / "weights" / "ppg_af.safetensors"),
              "--sample-rate", "5"],
             0, ["warning:", "ppg.csv", "is the sampling rate right?"]),
        Case("an ECG model on a PPG recording: refused without --modality",
             [*tool, str(root / "ppg.csv"), "-c", str(root / "weights" / "ecg_af.safetensors")],
             1, ["error:", "ppg.csv", "looks like PPG, not ECG", "--modality ecg"]),
        Case("... and a warning with --modality ecg (the user insists)",
             [*tool, str(root / "ppg.csv"), "-c", str(root / "weights" / "ecg_af.safetensors"),
              "--modality", "ecg"],
             0, ["warning:", "looks like PPG, not ECG"]),
        Case("a tool on decimal commas",
             [*tool, str(root / "ppg_comma.csv"), "-c",
              str(root / "weights" / "ppg_af.safetensors")],
             1, ["error:", "ppg_comma.csv", "decimal comma", "--csv-decimal"]),
        Case("a tool on values at the edge of float64",
             [*tool, str(root / "huge" / "huge.csv"), "-c",
              str(root / "weights" / "ppg_af.safetensors")],
             1, ["error:", "huge.csv", "too large"]),
        Case("--sample-rate 0",
             [*tool, str(root / "ppg.csv"), "-c", str(root / "weights" / "ppg_af.safetensors"),
              "--sample-rate", "0"],
             2, ["--sample-rate", "'0' is not a positive number"]),
        Case("predict without inputs: one line, no output folder left",
             ["-m", "heartgpt.predict", f"checkpoint={root}/weights/ppg_af.safetensors",
              f"paths.log_dir={root}/runs"],
             1, ["error: inputs: not given: inputs="], absent=["runs/predict"]),
        Case("predict without a checkpoint: one line, no output folder left",
             ["-m", "heartgpt.predict", "mode=embed", f"inputs={root}/ppg.csv",
              f"paths.log_dir={root}/runs"],
             1, ["error: checkpoint: not given: checkpoint="], absent=["runs/predict"]),
        Case("eval of a shard folder that is not there: one line, no run directory",
             ["-m", "heartgpt.eval", f"checkpoint={root}/weights/ecg_af.safetensors", "task=af",
              f"data.shard_dir={root}/nowhere", f"paths.log_dir={root}/runs"],
             1, ["error:", "nowhere"], absent=["runs/eval_af_ecg"]),
    ]


def _flip_tokens(shard_dir: Path, out: Path) -> None:
    """A copy of ``shard_dir`` whose first shard holds token 245 at every 10th position of
    every row, so that the first window read meets one (its checksum is now wrong)."""
    import shutil

    shutil.copytree(shard_dir, out)
    with h5py.File(out / "shard-00000.h5", "r+") as f:
        f["tokens"][:, ::10] = 245


def _prepare_good_set(root: Path) -> None:
    """The good ECG shard set the all-skipped and flipped-token cases start from."""
    from heartgpt.training.preparation import prepare
    from training_helpers import compose_train

    cfg = compose_train(["modality=ecg", "sample_rate=100", f"input={root}/ecg_records",
                         f"out_dir={root}/shards/ecg", "num_workers=1", "progress=false",
                         "segment.samples=500"], config_name="prepare")
    prepare(cfg)
    _flip_tokens(root / "shards" / "ecg", root / "shards" / "flipped")


@pytest.fixture(scope="module")
def battery(tmp_path_factory) -> dict:
    """Every case run once, in one interpreter: exit status and output per case name."""
    root = tmp_path_factory.mktemp("battery")
    _make_inputs(root)
    _prepare_good_set(root)
    cases = _cases(root)
    digests = {c.name + rel: _tree_digest(root / rel) for c in cases for rel in c.unchanged}
    logs = root / "logs"
    logs.mkdir()
    plan, results = root / "plan.json", root / "results.jsonl"
    plan.write_text(json.dumps([{"argv": c.argv[1:], "env": c.env, "log": str(logs / f"{i}.log")}
                                for i, c in enumerate(cases)]))
    env = {**os.environ, "WANDB_MODE": "offline", "CUDA_VISIBLE_DEVICES": "",
           "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(RUNNER), str(plan), str(results)], cwd=root, env=env,
                   check=True, timeout=900)
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(lines) == len(cases)
    outcome = {c.name: {"exit": r["exit"], "log": (logs / f"{i}.log").read_text()}
               for i, (c, r) in enumerate(zip(cases, lines, strict=True))}
    return {"root": root, "cases": {c.name: c for c in cases}, "outcome": outcome,
            "digests": digests}


@pytest.mark.parametrize("name", [c.name for c in _cases(Path("/battery"))])
def test_bad_input(battery, name):
    case: Case = battery["cases"][name]
    root: Path = battery["root"]
    result = battery["outcome"][name]
    log = result["log"]
    assert result["exit"] == case.exit, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    text = " ".join(log.split())  # the summary table wraps long lines
    if case.exit == 1:  # the words are in the one error line
        errors = [line for line in log.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, log[-3000:]
        text = errors[0]
    for word in case.words:
        assert word in text, f"{word!r} not in:\n{text[-3000:]}"
    for rel in case.unchanged:
        assert _tree_digest(root / rel) == battery["digests"][name + rel], f"{rel} changed"
    for rel in case.absent:  # a run directory of a run that never started; the payload's mark
        assert not (root / rel).exists(), f"{rel} was left behind"


def _shard_tokens(shard_dir: Path) -> np.ndarray:
    with h5py.File(shard_dir / "shard-00000.h5", "r") as f:
        return f["tokens"][:]


def _summary(shard_dir: Path) -> dict:
    return json.loads((shard_dir / "summary.json").read_text())


def test_decimal_commas_are_read_as_the_numbers_they_write(battery):
    shards = battery["root"] / "shards"
    assert np.array_equal(_shard_tokens(shards / "comma_read"), _shard_tokens(shards / "dot_read"))
    skipped = {s["record"]: s for s in _summary(shards / "decimal")["skipped"]}
    assert list(skipped) == ["comma"] and "decimal comma" in skipped["comma"]["detail"]


def test_prepare_skips_the_bad_records_and_writes_the_good_ones(battery):
    summary = _summary(battery["root"] / "shards" / "rates")
    assert summary["records_read"] == 2 and summary["shards"] >= 1
    reasons = {s["record"]: (s["reason"], s["detail"]) for s in summary["skipped"]}
    assert reasons["zero_rate"][0] == "unreadable" and "0.0 Hz" in reasons["zero_rate"][1]
    assert reasons["low_rate"][0] == "filter" and "Nyquist" in reasons["low_rate"][1]
    huge = _summary(battery["root"] / "shards" / "huge")
    assert [(s["record"], s["reason"]) for s in huge["skipped"]] == [("huge", "values too large")]


def test_prepare_keeps_a_record_at_a_wrong_rate_with_a_warning(battery):
    summary = _summary(battery["root"] / "shards" / "wrong_rate")
    assert summary["records_read"] == 1
    [warning] = summary["warnings"]
    assert warning["record"] == "ppg" and "is the sampling rate right?" in warning["warning"]


SAVE_LOOP = """
import sys, torch
from heartgpt.training.checkpoint_io import SafeCheckpointIO
io, weights = SafeCheckpointIO(), torch.randn(4_000_000)  # 16 MB a save
for step in range(1, 10_000):
    io.save_checkpoint({"global_step": step, "w": weights}, sys.argv[1])
    print(step, flush=True)
"""


def test_a_kill_during_a_save_with_tmpdir_elsewhere_leaves_a_whole_checkpoint(tmp_path):
    """``kill -9`` while ``last.ckpt`` is being rewritten, ``TMPDIR`` pointed at another folder:
    nothing goes through it (on another filesystem a rename from there would be a copy), and the
    file is the previous save or the new one, whole, never cut."""
    from heartgpt.training.resume import find_last_checkpoint

    target = tmp_path / "run" / "checkpoints" / "last.ckpt"
    other_tmp = tmp_path / "tmpdir"
    other_tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(other_tmp), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", SAVE_LOOP, str(target)], env=env,
                            stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(3):  # a few whole saves, then a kill in the middle of the loop
            assert proc.stdout.readline(), "the save loop died"
    finally:
        proc.kill()
        proc.wait()
    ckpt = torch.load(target, weights_only=True)
    assert ckpt["global_step"] >= 3 and ckpt["w"].numel() == 4_000_000
    assert list(other_tmp.iterdir()) == []  # nothing went through TMPDIR
    leftovers = [p.name for p in target.parent.iterdir() if p != target]
    assert all(n.startswith(".last.ckpt.") and n.endswith(".tmp") for n in leftovers)
    assert find_last_checkpoint(tmp_path) == target  # a half-written temporary is never chosen


@pytest.mark.parametrize(("override", "key", "words"), [
    ("trainer.max_steps=abc", "trainer.max_steps", "'abc' is not an integer"),
    ("data.global_batch_size=0", "data.global_batch_size", "0 must be >= 1"),
    ("module.lr=-0.1", "module.lr", "-0.1 must be > 0"),
    ("trainer.precision=bf17-mixed", "trainer.precision", "'bf17-mixed' is not one of"),
    ("trainer.devices=zero", "trainer.devices", "'zero' is not 'auto'"),
    ("model.dropout=1.5", "model.dropout", "1.5 must be < 1"),
    ("data.val_fraction=2", "data.val_fraction", "2 must be < 1"),
    ("module.betas=[0.9]", "module.betas", "is not two numbers in [0, 1)"),
    ("seed=x", "seed", "'x' is not an integer"),
    ("model.n_head=3", "model", "n_embd=64 is not divisible by n_head=3"),
])
def test_config_values_are_checked_with_their_key(override, key, words):
    from heartgpt.errors import ConfigError
    from heartgpt.training.config_checks import check_values
    from training_helpers import compose_train

    check_values(compose_train([]))  # the defaults pass
    with pytest.raises(ConfigError) as e:
        check_values(compose_train([override]))
    assert str(e.value).startswith(f"{key}: ") and words in str(e.value)


def test_a_safetensors_config_that_disagrees_with_its_tensors_allocates_nothing(tmp_path,
                                                                               monkeypatch):
    """Within the size limits but not what the tensors hold (n_embd 4096 x 64 layers: ~50 GB):
    refused after a model on the meta device only."""
    import heartgpt.model.checkpoint_format as checkpoints
    from heartgpt.model.checkpoint_format import CheckpointError
    from heartgpt.model.safetensors_file import load_safetensors

    built: list[str] = []

    class Spy(checkpoints.GPT):
        def __init__(self, config):
            built.append(torch.empty(0).device.type)  # where this model's tensors would go
            super().__init__(config)

    monkeypatch.setattr(checkpoints, "GPT", Spy)
    model = tiny_gpt(vocab_size=101)
    path = tmp_path / "fake.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
              metadata={"format": SAFETENSORS_FORMAT, "modality": "ecg", "task": "pretrain",
                        "config": json.dumps(dict(model.config.to_dict(), n_embd=4096,
                                                  n_layer=64))})
    with pytest.raises(CheckpointError, match=r"fake.safetensors: weights do not match the "
                                              r"stored config \(missing: .*shape"):
        load_safetensors(path)
    assert built == ["meta"]
    save_safetensors(model, path, modality="ecg")  # a true file: checked on meta, then built
    built.clear()
    load_safetensors(path)
    assert built == ["meta", "cpu"]
