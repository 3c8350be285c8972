"""The commands of the README and docs, run as typed from a folder outside the repository.

Every command in a ``bash`` block of :data:`DOCS` must have a line in :data:`PLAN`: run (with
tiny step counts and model sizes appended, and the documented placeholders filled in),
composed only (it needs GPUs, a network or a cluster), or shown with ``--help`` (a server).
A new command in the docs without a plan fails :func:`test_every_documented_command_has_a_plan`,
so the docs and this test cannot drift apart. Nothing passes ``hydra.sweep.dir`` or
``paths.log_dir``: runs and multiruns land where a user's would, under ``./outputs``.

The commands run in order in one Python process (``tests/command_runner.py``: each as
``python -m`` runs it, with its own argv, environment and log), which saves the ~6 s import of
torch and Lightning per command.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO

DOCS = ["README.md", "docs/training.md", "docs/generation.md", "docs/app.md"]

# Appended to training runs that do not start from released weights: a tiny model, 2 steps.
TINY = ["model.n_layer=1", "model.n_embd=16", "model.n_head=2"]
SHORT = ["trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.limit_val_batches=1",
         "data.num_workers=0", "data.global_batch_size=4"]
FEWER_TOKENS = ["-n", "20"]  # generation: 20 new tokens, not 500 (exact mode is 2 min for 500 x 8)


@dataclass
class Step:
    """What the test does with one documented command."""

    action: str  # run | compose (--cfg job only) | help (--help only)
    extra: list[str] = field(default_factory=list)
    why: str = ""  # for compose / help: why it is not run here


def run(*extra: str) -> Step:
    return Step("run", list(extra))


def compose(why: str) -> Step:
    return Step("compose", why=why)


def help_only(why: str) -> Step:
    return Step("help", why=why)


# In run order: later commands use what earlier ones wrote (a finished pre-training, a multirun).
PLAN: dict[str, Step] = {
    "make setup && make train": run(*TINY, *SHORT),  # set-up done: the suite runs installed
    "python -m heartgpt.train modality=ppg": run(*TINY, *SHORT),
    "python -m heartgpt.train model=medium trainer.max_steps=20000": run(*TINY, *SHORT),
    "python -m heartgpt.train experiment=paper_ecg_pretrain trainer=gpu": compose("needs a GPU"),
    "python -m heartgpt.train trainer=ddp trainer.devices=4": compose("needs 4 GPUs"),
    "python -m heartgpt.train trainer.precision=bf16-mixed": run(*TINY, *SHORT),
    "python -m heartgpt.train ckpt_path=last": run(*TINY, *SHORT, "trainer.max_steps=3"),
    "python -m heartgpt.train logger.wandb.offline=false": compose("needs `wandb login` and a network"),
    "python -m heartgpt.train logger=csv": run(*TINY, *SHORT),
    "python -m heartgpt.train experiment=demo_long": run(*TINY, *SHORT),
    "python -m heartgpt.train experiment=demo_af": run(*TINY, *SHORT),
    "make train ARGS=modality=ppg": run(*TINY, *SHORT),
    "python -m heartgpt.train experiment=demo_beats": run(*TINY, *SHORT),
    "python -m heartgpt.train task=af modality=ppg module.pretrained=PPGPT_500k_iters.zip "
    "data.shard_dir=<your shards>": run(*SHORT),
    "python -m heartgpt.train experiment=paper_ppg_af paths.weights_dir=../shared/weights":
        run(*SHORT, "data.shard_dir=data/demo/ppg/af"),
    "python -m heartgpt.train -m experiment=demo_af freeze=head,last_block,full logger=[wandb,csv]":
        run(*TINY, *SHORT),
    "python -m heartgpt.compare outputs/af_ecg/multiruns/<time>": run(),
    "python -m heartgpt.train -m experiment=demo_hr,demo_rhythm,demo_hr_tag,demo_af,demo_af_lora "
    "++module.pretrained=ECGPT_560k_iters.zip run_name=demo_heads": run(*SHORT),
    "python -m heartgpt.compare outputs/demo_heads/multiruns/<time>": run(),
    "python -m heartgpt.search experiment=demo_af hparams_search=demo_af_optuna":
        help_only("12 trials: the 3-trial command below runs"),
    "python -m heartgpt.search experiment=demo_af hparams_search=demo_af_optuna "
    "search.n_trials=3": run(*TINY, *SHORT),
    "python -m heartgpt.compare outputs/af_ecg/searches/demo_af_ecg": run(),
    "python -m heartgpt.cv experiment=demo_af data.folds=5": run(*TINY, *SHORT),
    "python -m heartgpt.cv experiment=paper_ppg_af data.folds=loso":
        run(*SHORT, "data.shard_dir=data/demo/ppg/af"),
    "python -m heartgpt.cv --summarize outputs/af_ecg/cv/<time>": run(),
    "python -m heartgpt.train -m experiment=demo_af data.folds=5 data.fold=0,1,2,3,4":
        run(*TINY, *SHORT),
    "python -m heartgpt.cv --summarize outputs/af_ecg/multiruns/<time>": run(),
    "python -m heartgpt.eval checkpoint=ECGPT_560k_iters.zip data.shard_dir=data/demo/ecg/pretrain":
        run("data.num_workers=0"),
    "python -m heartgpt.eval task=af checkpoint=ECGPT_AF_1k_iters.zip "
    "data.shard_dir=data/demo/ecg/af": run("data.num_workers=0"),
    "python -m heartgpt.eval task=af checkpoint=ECGPT_AF_1k_iters.zip "
    "data.shard_dir=data/demo/ecg/af data.split=test data.folds=5 data.fold=2":
        run("data.num_workers=0"),
    "python -m heartgpt.eval checkpoint=ECGPT_560k_iters.zip data.shard_dir=data/demo/ecg/pretrain "
    "data.global_batch_size=16 data.micro_batch_size=8 trainer=ddp_cpu trainer.devices=2":
        compose("2 processes: tests/test_eval.py runs them"),
    "python -m heartgpt.predict checkpoint=PPGPT_AF_1k_iters.zip "
    "inputs='../shared/example_inputs/*PPG*.csv' sample_rate=50": run(),
    "python -m heartgpt.predict mode=beats checkpoint=PPGPT_beat_5k_iters.zip "
    "inputs='../shared/example_inputs/*PPG*.csv' sample_rate=50": run(),
    "python -m heartgpt.predict mode=loss checkpoint=ECGPT_560k_iters.zip "
    "inputs='../shared/example_inputs/*ECG*.csv' sample_rate=100": run(),
    "python -m heartgpt.predict mode=embed checkpoint=ECGPT_560k_iters.zip "
    "inputs='data/demo/ecg/recordings/*.npy' sample_rate=500 out_dir=outputs/embed/ecgpt": run(),
    "python -m heartgpt.probe predictions=outputs/embed/ecgpt "
    "labels=data/demo/ecg/recordings/labels.csv target=hr_bpm": run(),
    "python -m heartgpt.export checkpoint=PPGPT_AF_1k_iters.zip": run(),
    "python -m heartgpt.export checkpoint=PPGPT_beat_5k_iters.zip format=torch_export": run(),
    "python -m heartgpt.predict checkpoint=outputs/export/PPGPT_AF_1k_iters.onnx "
    "inputs='../shared/example_inputs/*PPG*.csv' sample_rate=50": run(),
    "python -m heartgpt.train -m hydra/launcher=slurm experiment=paper_ecg_pretrain trainer=ddp "
    "trainer.num_nodes=2 trainer.devices=4 hydra.launcher.partition=<partition> "
    "hydra.launcher.timeout_min=2880 ckpt_path=last": compose("needs a SLURM cluster"),
    "python -m heartgpt.generate $E/example_context_PPG.csv -c $W/PPGPT_500k_iters.zip -n 500 "
    "-s 4 --seed 0 [--mode cached]": run(*FEWER_TOKENS),
    "python -m heartgpt.screen_af recording.csv --sample-rate 125 -c $W/PPGPT_AF_1k_iters.zip": run(),
    "python -m heartgpt.detect_beats $E/example_context_PPG_beat_detect_long_input.csv "
    "-c $W/PPGPT_beat_5k_iters.zip": run(),
    "python -m heartgpt.interpret attention $E/example_context_ECG.csv -c $W/ECGPT_560k_iters.zip "
    "--layers 0,7": run(),
    "python -m heartgpt.interpret homonyms $E/example_context_PPG.csv -c $W/PPGPT_500k_iters.zip": run(),
    "python -m heartgpt.interpret shift $E/example_context_ECG_AFib1.csv -c $W/ECGPT_AF_1k_iters.zip "
    "--base $W/ECGPT_560k_iters.zip": run(),
    "python -m heartgpt.interpret export $E/example_context_ECG.csv -c $W/ECGPT_560k_iters.zip": run(),
    "python -m heartgpt.generate context.csv -c PPGPT_500k_iters.zip -n 500 -s 8 --seed 0":
        run(*FEWER_TOKENS),
    "python -m heartgpt.generate context.csv -c PPGPT_500k_iters.zip -n 500 -s 8 --seed 0 "
    "--mode cached": run(*FEWER_TOKENS),
    "python -m heartgpt.app ../shared/weights outputs/": help_only("a server (tests/test_app.py)"),
    "HEARTGPT_WEIGHTS=../shared/weights python -m heartgpt.app": help_only("a server"),
}


def documented_commands() -> list[tuple[str, str]]:
    """``(file, command)`` of every ``python -m heartgpt...`` / ``make train|app`` line in a
    ``bash`` block of :data:`DOCS`, continuation lines joined, comments and prompts dropped."""
    found = []
    for doc in DOCS:
        text = (REPO / doc).read_text()
        for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = re.sub(r"\s+#.*$", "", line).strip()
                line = re.sub(r"^\S+=\S+; ", "", line)  # W=...; E=...; shell set-up lines
                if re.search(r"(^|\s)(python -m heartgpt\.|make (train|app))", line):
                    found.append((doc, re.sub(r"\s+", " ", line)))
    return found


def test_every_documented_command_has_a_plan():
    documented = {cmd for _, cmd in documented_commands()}
    assert documented, "no commands found: has the docs' format changed?"
    missing = sorted(documented - PLAN.keys())
    assert not missing, f"documented commands this test does not know: {missing}"
    stale = sorted(PLAN.keys() - documented)
    assert not stale, f"commands no longer documented (drop them from PLAN): {stale}"


def argv_of(command: str, shared: Path) -> tuple[list[str], dict[str, str]]:
    """``[module, *args]`` of a documented command with its placeholders filled in (``<dir>/<time>``
    is filled by the runner when the command starts), and the environment it sets."""
    env: dict[str, str] = {}
    command = command.replace("$W", str(shared / "weights")).replace("$E", str(shared / "example_inputs"))
    command = command.replace("../shared", str(shared)).replace("[--mode cached]", "--mode cached")
    command = command.replace("<your shards>", "data/demo/ppg/af").replace("<partition>", "gpu")
    command = command.replace("context.csv", str(shared / "example_inputs" / "example_context_PPG.csv"))
    words = shlex.split(command.removeprefix("make setup && "))
    while words and re.fullmatch(r"[A-Z_]+=\S+", words[0]):
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    if words[:2] == ["make", "train"]:  # the Makefile's train target, in this Python
        words = ["python", "-m", "heartgpt.train", *(w.removeprefix("ARGS=") for w in words[2:])]
    if words[:2] == ["make", "app"]:
        words = ["python", "-m", "heartgpt.app"]
    assert words[:2] == ["python", "-m"], command
    return words[2:], env


def write_recording_csv(path: Path, shared: Path) -> None:
    """``recording.csv`` of the README: the example AF PPG (50 Hz) resampled to 125 Hz."""
    from scipy.signal import resample_poly

    signal = np.loadtxt(shared / "example_inputs" / "example_context_PPG_AFib.csv", delimiter=",")
    np.savetxt(path, resample_poly(signal.ravel(), 5, 2), fmt="%.6f")


@pytest.mark.slow
@pytest.mark.shared
def test_documented_commands_run_as_typed(shared_dir, tmp_path):
    cwd = tmp_path / "user"  # outside the repository, no config overrides of where runs go
    cwd.mkdir()
    env = {**os.environ, "WANDB_MODE": "offline", "CUDA_VISIBLE_DEVICES": "", "MPLBACKEND": "Agg",
           "HEARTGPT_WEIGHTS": str(shared_dir / "weights"), "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    # a small demo set first (6 subjects: a leave-one-subject-out run has 6 folds, not 200)
    prep = subprocess.run([sys.executable, "-m", "heartgpt.prepare", "source=demo",
                           "demo.subjects=6", "demo.seconds=40", "demo.target_subjects=6",
                           "demo.target_records=2"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert prep.returncode == 0, prep.stdout + prep.stderr
    write_recording_csv(cwd / "recording.csv", shared_dir)

    plan = []
    for i, (command, step) in enumerate(PLAN.items()):
        argv, extra_env = argv_of(command, shared_dir)
        if step.action == "compose":  # a single composition, printed: nothing runs
            argv = [argv[0], *(a for a in argv[1:] if a != "-m"), "--cfg", "job"]
        elif step.action == "help":
            argv = [argv[0], "--help"]
        plan.append({"argv": [*argv, *step.extra], "env": extra_env,
                     "log": str(tmp_path / f"command_{i:02d}.log")})
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    results = tmp_path / "results.jsonl"
    runner = subprocess.run([sys.executable, str(Path(__file__).with_name("command_runner.py")),
                             str(tmp_path / "plan.json"), str(results)], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=1800)
    done = [json.loads(line) for line in results.read_text().splitlines()] if results.is_file() else []
    print("\n".join(f"{r['seconds']:6.1f} s  exit {r['exit']}  {c}" for r, c in zip(done, PLAN, strict=False)))
    assert len(done) == len(plan), f"the runner stopped early:\n{runner.stdout}{runner.stderr}"
    failures = []
    for step, result in zip(plan, done, strict=True):
        output = Path(step["log"]).read_text()
        if result["exit"] != 0 or "Traceback" in output:
            failures.append(f"$ python -m {shlex.join(step['argv'])}\n(exit {result['exit']})\n"
                            f"{output[-3000:]}")
    assert not failures, "\n\n".join(failures)

    # each multirun: one run directory per point, under outputs/<task>/multiruns/<time>/
    sweeps = sorted((s for s in (cwd / "outputs" / "af_ecg" / "multiruns").iterdir()
                     if not (s / "optimization_results.yaml").is_file()), key=lambda p: p.name)
    assert len(sweeps) == 2, sweeps
    for sweep, points in zip(sweeps, (3, 5), strict=True):
        runs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
        assert runs == [str(i) for i in range(points)], (sweep, runs)
        for run_dir in runs:
            assert (sweep / run_dir / "test_metrics.json").is_file()
            assert (sweep / run_dir / ".hydra" / "overrides.yaml").is_file()
    freezes = [(s / ".hydra" / "overrides.yaml").read_text() for s in sorted(sweeps[0].iterdir())
               if s.is_dir()]
    assert [re.search(r"freeze=(\w+)", o).group(1) for o in freezes] == ["head", "last_block", "full"]
    # the search wrote its best parameters; the heads' sweep checked what each run expects
    (search,) = (cwd / "outputs" / "af_ecg" / "searches").glob("*/optimization_results.yaml")
    assert "best_params" in search.read_text()
    (heads,) = (cwd / "outputs" / "demo_heads" / "multiruns").iterdir()
    with open(heads / "comparison.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["experiment"] for r in table] == ["demo_hr", "demo_rhythm", "demo_hr_tag", "demo_af",
                                                "demo_af_lora"]
    # 2 steps: judged, not necessarily met; demo_af expects nothing (demo_af_lora is judged by it)
    assert [r["met"] for r in table][3] == ""
    assert all(r["met"] in ("yes", "NO") for i, r in enumerate(table) if i != 3)
    # the fine-tunes say which checkpoint they started from (a finished run, by sha256)
    (demo_af,) = (cwd / "outputs" / "af_ecg" / "runs").iterdir()
    assert "sha256" in (demo_af / "config.yaml").read_text()
    assert not (set(os.listdir(cwd)) - {"data", "outputs", "recording.csv"}), os.listdir(cwd)
