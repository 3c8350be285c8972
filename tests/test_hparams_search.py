"""``python -m heartgpt.search hparams_search=<preset>``: an Optuna (>= 3) study in SQLite whose
trials are training runs of the composed config; a killed search continues where it stopped, and
a trial the pruner finds unpromising stops at a validation."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from training_helpers import (
    FAST,
    build_tiny_demo,
    column,
    compose_train,
    read_metrics_csv,
    run_module,
)

optuna = pytest.importorskip("optuna", minversion="3.0")  # the optuna extra; in .[dev]

PRESET = "demo_af_optuna"
SEARCHED = {"module.lr", "freeze", "finetune", "lora_rank"}  # conf/hparams_search/demo_af_optuna.yaml
# Validation on every window of 2 of the 8 tiny demo subjects (stratified: AF-like and sinus),
# so that val/auroc, the optimised metric, is defined and differs between trials.
BOTH_CLASSES_VALIDATED = ["data.val_fraction=0.3", "trainer.limit_val_batches=1.0"]
QUIET = ["callbacks.attention_maps=null", "callbacks.progress.mode=log",
         "callbacks.rich_model_summary=null", "logger=csv"]


def test_the_preset_is_a_sqlite_study_of_the_af_metric(tmp_path):
    from heartgpt.training.search import distribution, search_settings

    search = search_settings(["experiment=demo_af", f"hparams_search={PRESET}",
                              f"paths.log_dir={tmp_path}"])
    assert search.storage == f"sqlite:///{tmp_path}/af_ecg/searches/demo_af_ecg/study.db"
    assert search.dir == f"{tmp_path}/af_ecg/searches/demo_af_ecg"
    assert (search.direction, search.n_trials, search.optimized_metric) == ("maximize", 12,
                                                                            "val/auroc")
    assert search.sampler._target_ == "optuna.samplers.TPESampler"
    assert search.pruner._target_ == "optuna.pruners.MedianPruner"
    assert set(search.params) == SEARCHED
    lr = distribution("module.lr", search.params["module.lr"])
    assert isinstance(lr, optuna.distributions.FloatDistribution)
    assert (lr.low, lr.high, lr.log) == (1e-4, 1e-2, True)
    assert distribution("lora_rank", search.params.lora_rank).choices == (4, 8, 16)
    assert distribution("freeze", search.params.freeze).choices == ("head", "last_block")
    steps = distribution("module.warmup", "tag(int, interval(0, 10))")
    assert isinstance(steps, optuna.distributions.IntDistribution) and not steps.log
    assert distribution("seed", "range(1, 4)").choices == (1, 2, 3)


def test_a_searched_key_given_on_the_command_line_is_fixed(tmp_path):
    from heartgpt.training.search import search_settings

    search = search_settings(["experiment=demo_af", f"hparams_search={PRESET}", "finetune=lora",
                              "search.n_trials=3", f"paths.log_dir={tmp_path}"])
    assert set(search.params) == SEARCHED - {"finetune"} and search.n_trials == 3


def test_a_bad_range_and_a_missing_preset_are_one_line_errors(tmp_path):
    from heartgpt.search import main

    with pytest.raises(SystemExit) as bad:
        main(["experiment=demo_af", f"hparams_search={PRESET}", "search.params.freeze='choice(head,'",
              f"paths.log_dir={tmp_path}"])
    assert str(bad.value.code).startswith("error: search.params.freeze: cannot parse")
    with pytest.raises(SystemExit) as missing:
        main(["experiment=demo_af", f"paths.log_dir={tmp_path}"])
    assert "hparams_search=demo_af_optuna" in str(missing.value.code)
    assert len(str(missing.value.code).splitlines()) == 1
    assert not (tmp_path / "af_ecg").exists()  # nothing started


def test_train_refuses_a_search_preset(tmp_path):
    from heartgpt.errors import ConfigError
    from heartgpt.training.run import train

    cfg = compose_train(["experiment=demo_af", f"hparams_search={PRESET}"],
                        output_dir=tmp_path / "run", log_dir=tmp_path / "logs")
    with pytest.raises(ConfigError, match=r"python -m heartgpt\.search"):
        train(cfg)


@pytest.mark.parametrize("finetune", ["none", "lora"])
def test_lora_rank_is_searched_where_lora_is_on(finetune, tmp_path):
    """``lora_rank``, the preset's search variable, sets ``module.lora.rank`` of the LoRA trials;
    the others have no adapters; without the preset ``finetune=lora`` is rank 8 as before."""
    paths = {"data_dir": tmp_path / "data", "output_dir": tmp_path / "run", "log_dir": tmp_path / "logs"}
    common = ["experiment=demo_af", "module.pretrained=null", f"finetune={finetune}"]
    searched = compose_train([*common, f"hparams_search={PRESET}", "lora_rank=16"], **paths)
    plain = compose_train(common, **paths)
    if finetune == "lora":
        assert searched.module.lora.rank == 16 and plain.module.lora.rank == 8
        assert OmegaConf.to_container(plain.module.lora, resolve=True) == {
            "rank": 8, "alpha": 16, "dropout": 0.0, "targets": ["qkv", "proj"]}
    else:
        assert searched.module.get("lora") is None and plain.module.get("lora") is None
    assert "lora_rank" not in plain  # only the preset declares it


def test_a_trial_behind_the_pruner_is_stopped_at_a_validation():
    from heartgpt.training.search import PruneTrial

    study = optuna.create_study(direction="maximize",
                                pruner=optuna.pruners.ThresholdPruner(lower=0.6))
    trial = study.ask()
    trainer = SimpleNamespace(sanity_checking=False, global_step=3,
                              callback_metrics={"val/auroc": 0.7})
    callback = PruneTrial(trial, "val/auroc")
    callback.on_validation_end(trainer, None)  # above the threshold: goes on
    trainer.sanity_checking, trainer.callback_metrics["val/auroc"] = True, 0.1
    callback.on_validation_end(trainer, None)  # the sanity check is not reported
    trainer.sanity_checking, trainer.global_step = False, 6
    with pytest.raises(optuna.TrialPruned, match="val/auroc=0.1 at step 6"):
        callback.on_validation_end(trainer, None)
    assert study._storage.get_trial(trial._trial_id).intermediate_values == {3: 0.7, 6: 0.1}


def _finished(db: Path) -> int:
    if not db.is_file():
        return 0
    with sqlite3.connect(db, timeout=30) as con:
        try:
            return con.execute("SELECT count(*) FROM trials WHERE state IN "
                               "('COMPLETE', 'PRUNED')").fetchone()[0]
        except sqlite3.OperationalError:  # the tables are being created
            return 0


@pytest.mark.slow
def test_a_killed_three_trial_search_resumes_and_finishes_one_study(tmp_path):
    """The preset as a user runs it, 3 trials of a tiny model on the tiny demo shards, killed
    (SIGKILL) once its first trial has finished: the same command again continues the same
    study, runs the killed trial's parameters again, and ends with 3 finished trials, each the
    run of the parameters it was given; ``optimization_results.yaml`` names the best."""
    data_dir = build_tiny_demo(tmp_path / "data")
    logs = tmp_path / "logs"
    args = ["experiment=demo_af", f"hparams_search={PRESET}", "search.n_trials=3",
            "search.pruner=null", *FAST, *QUIET, *BOTH_CLASSES_VALIDATED, "module.pretrained=null",
            "test=false", f"paths.data_dir={data_dir}", f"paths.log_dir={logs}"]
    study_dir = logs / "af_ecg" / "searches" / "demo_af_ecg"
    db = study_dir / "study.db"
    env = {**os.environ, "WANDB_MODE": "offline", "CUDA_VISIBLE_DEVICES": "",
           "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-m", "heartgpt.search", *args], cwd=tmp_path,
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    second_started = study_dir / "trial_1" / "config.yaml"  # trial 0 done, trial 1 training
    while not second_started.is_file() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    assert first.returncode == -signal.SIGKILL, first.stderr.read().decode()[-3000:]
    assert _finished(db) == 1
    assert not (study_dir / "optimization_results.yaml").exists()

    done = run_module(args, cwd=tmp_path, timeout=300, module="heartgpt.search")
    assert done.returncode == 0, done.stderr[-4000:]
    study = optuna.load_study(study_name="demo_af_ecg", storage=f"sqlite:///{db}")
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"], states
    assert "trial 1 was left running" in done.stdout
    killed, finished = study.trials[1], [study.trials[i] for i in (0, 2, 3)]
    assert killed.params and finished[1].params == killed.params  # run again, first

    for trial in finished:
        run = Path(trial.user_attrs["run_dir"])
        assert run == study_dir / f"trial_{trial.number}"
        ran = OmegaConf.load(run / "config.yaml")  # resolved, as the run used it
        assert set(trial.params) == SEARCHED
        assert ran.module.lr == trial.params["module.lr"]
        assert 1e-4 <= ran.module.lr <= 1e-2
        assert ran.freeze.strategy == trial.params["freeze"]
        if trial.params["finetune"] == "lora":
            assert ran.module.lora.rank == trial.params["lora_rank"]
        else:
            assert ran.module.get("lora") is None
        logged = column(read_metrics_csv(run), "val/auroc")
        assert len(logged) == 2  # debug=fast: validations at steps 3 and 6
        assert trial.value == pytest.approx(logged[-1][1], rel=1e-6)  # train() returns the last
        # the pruner's curve: the validations, at the global step (metrics.csv: 0-based)
        assert trial.intermediate_values == {step + 1: pytest.approx(v, rel=1e-6)
                                             for step, v in logged}
        assert list(trial.intermediate_values) == [3, 6]

    results = OmegaConf.load(study_dir / "optimization_results.yaml")
    best = max(finished, key=lambda t: t.value)
    assert results.best_value == pytest.approx(best.value)
    assert dict(results.best_params) == best.params
    assert results.trials.complete == 3
    assert results.best_run_dir == str(study_dir / f"trial_{best.number}")
