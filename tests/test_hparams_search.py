"""``hparams_search=<preset>``: an Optuna search (hydra-optuna-sweeper, the ``optuna`` extra) over
the demo AF fine-tuning, as lightning-hydra-template does it; the best parameters and value land in
``<sweep dir>/optimization_results.yaml``."""

from __future__ import annotations

import importlib.util
import os

import pytest
from omegaconf import OmegaConf

from training_helpers import (
    CONF_DIR,
    FAST,
    build_tiny_demo,
    column,
    compose_train,
    read_metrics_csv,
    run_module,
)

PRESET = "demo_af_optuna"
SEARCHED = {"module.lr", "freeze", "finetune", "lora_rank"}  # conf/hparams_search/demo_af_optuna.yaml
# Validation on every window of 2 of the 8 tiny demo subjects (stratified: AF-like and sinus),
# so that val/auroc, the optimised metric, is defined and differs between trials.
BOTH_CLASSES_VALIDATED = ["data.val_fraction=0.3", "trainer.limit_val_batches=1.0"]
QUIET = ["callbacks.attention_maps=null", "callbacks.progress.mode=log",
         "callbacks.rich_model_summary=null"]


@pytest.fixture(scope="module")
def optuna_sweeper() -> None:
    """hydra-optuna-sweeper (``pip install -e .[optuna]``; in ``.[dev]``): fails in CI if missing,
    else skips."""
    if importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None:
        reason = "hydra-optuna-sweeper is not installed (pip install -e '.[optuna]')"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)


def test_the_preset_is_an_optuna_search_of_the_af_metric(optuna_sweeper):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=demo_af", f"hparams_search={PRESET}"],
                      return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper")
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler"
    assert (sweeper.direction, sweeper.n_jobs, sweeper.storage) == ("maximize", 1, None)
    assert set(sweeper.params) == SEARCHED
    assert cfg.optimized_metric == "val/auroc"  # what task=af's checkpoints are chosen by too


@pytest.mark.parametrize("finetune", ["none", "lora"])
def test_lora_rank_is_searched_where_lora_is_on(finetune, optuna_sweeper, tmp_path):
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


@pytest.mark.slow
def test_a_three_trial_search_writes_its_best_parameters(optuna_sweeper, tmp_path):
    """The preset as a user runs it (``-m experiment=demo_af hparams_search=demo_af_optuna``), 3
    trials of a tiny model on the tiny demo shards: each trial runs the parameters it was given,
    and ``optimization_results.yaml`` names the trial with the best val/auroc it logged."""
    data_dir = build_tiny_demo(tmp_path / "data")
    sweep = tmp_path / "sweep"
    done = run_module(["-m", "experiment=demo_af", f"hparams_search={PRESET}",
                       "hydra.sweeper.n_trials=3", *FAST, *QUIET, *BOTH_CLASSES_VALIDATED,
                       "module.pretrained=null", "test=false", f"paths.data_dir={data_dir}",
                       f"hydra.sweep.dir={sweep}"], cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]

    trials = []
    for job in range(3):
        run = sweep / str(job)
        given = dict(o.split("=", 1) for o in OmegaConf.load(run / ".hydra" / "overrides.yaml"))
        params = {k: v for k, v in given.items() if k in SEARCHED}
        assert set(params) == SEARCHED, given
        ran = OmegaConf.load(run / "config.yaml")  # resolved, as the run used it
        assert ran.module.lr == float(params["module.lr"])
        assert 1e-4 <= ran.module.lr <= 1e-2
        assert ran.freeze.strategy == params["freeze"] in ("head", "last_block")
        if params["finetune"] == "lora":
            assert ran.module.lora.rank == int(params["lora_rank"]) in (4, 8, 16)
        else:
            assert params["finetune"] == "none" and ran.module.get("lora") is None
        logged = column(read_metrics_csv(run), "val/auroc")
        assert len(logged) == 2  # debug=fast: validations at steps 3 and 6
        trials.append((logged[-1][1], params))  # train() returns the last one
    assert not (sweep / "3").exists()

    results = OmegaConf.load(sweep / "optimization_results.yaml")
    assert results.name == "optuna"
    best_value = max(value for value, _ in trials)
    assert 0.0 <= best_value <= 1.0
    assert results.best_value == pytest.approx(best_value, rel=1e-6)
    best = next(params for value, params in trials if value == best_value)  # optuna: the first
    assert {k: str(v) for k, v in results.best_params.items()} == best
    assert f"Best value: {results.best_value}" in done.stdout + done.stderr
