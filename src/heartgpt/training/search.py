"""Hyper-parameter searches that survive: ``python -m heartgpt.search hparams_search=<preset>``.

An Optuna (>= 3) study in a SQLite database (``search.storage``, by default
``<search.dir>/study.db``) drives trials that are ordinary training runs: each composes
``conf/train.yaml`` with the command's overrides plus the trial's parameters, exactly as
``python -m heartgpt.train <overrides> <params>`` would, and runs it in
``<search.dir>/trial_<number>/``. A search started again with the same study continues it: the
trials its killed predecessor left ``RUNNING`` are marked ``FAIL`` and their parameters run again
first, and it stops when ``search.n_trials`` trials have finished (complete or pruned).
:class:`PruneTrial` reports ``optimized_metric`` after every validation and stops a trial the
study's pruner finds unpromising.

Why not Hydra's Optuna sweeper: hydra-optuna-sweeper pins optuna < 3, whose database storages
fail with SQLAlchemy 2, so its studies live in memory and die with the process.
The search space keeps the sweeper's syntax (``choice(a, b)``, ``interval(lo, hi)``,
``tag(log, interval(lo, hi))``, ``range(a, b)``), parsed by Hydra's own override parser.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf, open_dict

from heartgpt.errors import ConfigError
from heartgpt.files import write_text_atomic

log = logging.getLogger("heartgpt.search")
RESULTS = "optimization_results.yaml"  # <search.dir>/: the best trial's parameters and value
FINISHED = ("COMPLETE", "PRUNED")  # the trial states search.n_trials counts


def distribution(key: str, spec: Any) -> Any:
    """The Optuna distribution of one ``search.params`` entry, written in the sweep syntax of
    Hydra's Optuna sweeper (``choice(...)``, ``range(...)``, ``interval(...)``, ``tag(log, ...)``, ``tag(int, ...)``);
    a plain value is a one-choice categorical."""
    import optuna.distributions as d
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

    try:
        (override,) = OverridesParser.create().parse_overrides([f"{key}={spec}"])
    except Exception as e:  # Hydra's parser error names the syntax problem
        raise ConfigError(f"search.params.{key}", f"cannot parse {spec!r}: {e}") from None
    value = override.value()
    if isinstance(value, ChoiceSweep):
        return d.CategoricalDistribution(list(value.list))
    if isinstance(value, RangeSweep):
        return d.CategoricalDistribution(list(range(int(value.start), int(value.stop),
                                                    int(value.step))))
    if isinstance(value, IntervalSweep):
        log_scale = "log" in value.tags
        if "int" in value.tags:  # Hydra's interval() is always of floats
            return d.IntDistribution(int(value.start), int(value.end), log=log_scale)
        return d.FloatDistribution(float(value.start), float(value.end), log=log_scale)
    return d.CategoricalDistribution([value])


class PruneTrial(L.Callback):
    """Reports ``metric`` to an Optuna trial after every validation (at the global step) and
    stops the run with ``optuna.TrialPruned`` when the study's pruner says so."""

    def __init__(self, trial: Any, metric: str) -> None:
        self.trial, self.metric = trial, metric

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import optuna

        value = trainer.callback_metrics.get(self.metric)
        if trainer.sanity_checking or value is None:
            return
        self.trial.report(float(value), step=trainer.global_step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"{self.metric}={float(value):.4g} at step "
                                     f"{trainer.global_step}")


def search_settings(overrides: list[str]) -> DictConfig:
    """The resolved ``search`` section of the train config the overrides compose (an
    ``hparams_search=<preset>`` among them sets it), less the searched keys that the overrides
    give a value (``finetune=lora``: LoRA trials only)."""
    from heartgpt.training.run import compose_config

    cfg = compose_config(overrides)
    if not cfg.get("search"):
        raise ConfigError("hparams_search", "no search to run: name a preset, e.g. "
                          "hparams_search=demo_af_optuna (conf/hparams_search/)")
    search = OmegaConf.create(OmegaConf.to_container(cfg.search, resolve=True))
    fixed = [key for key in search.params if key in given_keys(overrides)]
    if fixed:  # the command line's value holds for every trial, as with Hydra's sweeper
        log.info("not searched (given on the command line): %s", ", ".join(fixed))
    with open_dict(search):
        search.optimized_metric = cfg.optimized_metric
        for key in fixed:
            del search.params[key]
    return search


def open_study(search: DictConfig) -> Any:
    """The study of ``search`` (created, or loaded to continue it). Trials left ``RUNNING`` by a
    killed search become ``FAIL`` and their parameters are queued to run again first."""
    import optuna
    from hydra.utils import instantiate
    from optuna.trial import TrialState

    Path(search.dir).mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        study_name=search.study_name, storage=search.storage, direction=search.direction,
        sampler=instantiate(search.sampler) if search.get("sampler") else None,
        pruner=instantiate(search.pruner) if search.get("pruner") else optuna.pruners.NopPruner(),
        load_if_exists=True)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        log.warning("trial %d was left running (a killed search): marked failed%s", trial.number,
                    ", its parameters queued again" if trial.params else "")
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        if trial.params:  # else it was killed before drawing any: the sampler draws anew
            study.enqueue_trial(trial.params, skip_if_exists=False)
    return study


def finished_trials(study: Any) -> int:
    """How many trials of ``study`` completed or were pruned."""
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False,
                                states=tuple(getattr(TrialState, s) for s in FINISHED)))


def run_trial(trial: Any, overrides: list[str], search: DictConfig) -> float:
    """One trial: the train config of ``overrides`` and the trial's parameters, in
    ``<search.dir>/trial_<number>``; returns its ``optimized_metric`` at the end of fitting."""
    import optuna

    from heartgpt.training.run import compose_config, train

    params = [f"{key}={_value(trial, key, spec)}" for key, spec in search.params.items()]
    run_dir = Path(search.dir) / f"trial_{trial.number}"
    log.info("trial %d: %s (%s)", trial.number, " ".join(params), run_dir)
    cfg = compose_config([*overrides, *params, f"hydra.run.dir={run_dir}"])
    with open_dict(cfg):
        del cfg["search"]  # a trial is a plain run
    trial.set_user_attr("run_dir", str(run_dir))
    # as a Hydra run records them: python -m heartgpt.compare <search.dir> tables the trials
    write_text_atomic(run_dir / ".hydra" / "overrides.yaml",
                      OmegaConf.to_yaml(OmegaConf.create([*overrides, *params])))
    value = train(cfg, callbacks=[PruneTrial(trial, search.optimized_metric)])
    if value is None:
        raise optuna.TrialPruned(f"{search.optimized_metric} was not logged")  # pragma: no cover
    return value


def _value(trial: Any, key: str, spec: Any) -> Any:
    """The trial's value of ``key`` (drawn from its distribution), as an override value."""
    import optuna.distributions as d

    dist = distribution(key, spec)
    if isinstance(dist, d.CategoricalDistribution):
        return trial.suggest_categorical(key, dist.choices)
    if isinstance(dist, d.IntDistribution):
        return trial.suggest_int(key, dist.low, dist.high, log=dist.log)
    return trial.suggest_float(key, dist.low, dist.high, log=dist.log)


def given_keys(overrides: list[str]) -> set[str]:
    """The config keys that ``overrides`` set (``+key=``, ``++key=`` and ``~key`` included)."""
    return {o.split("=", 1)[0].lstrip("+~") for o in overrides}


def run_search(overrides: list[str]) -> dict[str, Any]:
    """Run (or continue) the search the overrides name until ``search.n_trials`` trials have
    finished; write ``<search.dir>/optimization_results.yaml`` and return its content."""
    import optuna

    search = search_settings(overrides)
    for key, spec in search.params.items():
        distribution(key, spec)  # a bad range stops here, before any trial
    study = open_study(search)
    done = finished_trials(study)
    left = max(int(search.n_trials) - done, 0)
    log.info("study %s (%s): %d trial(s) finished, %d to run", search.study_name,
             search.storage, done, left)
    while finished_trials(study) < int(search.n_trials):
        study.optimize(lambda t: run_trial(t, overrides, search), n_trials=1)  # errors stop it
    best = study.best_trial
    results = {"name": "optuna", "study_name": search.study_name, "storage": search.storage,
               "best_trial": best.number, "best_run_dir": best.user_attrs.get("run_dir", ""),
               "best_params": dict(best.params), "best_value": best.value,
               "trials": {s.lower(): len(study.get_trials(
                   deepcopy=False, states=(getattr(optuna.trial.TrialState, s),)))
                   for s in ("COMPLETE", "PRUNED", "FAIL")}}
    write_text_atomic(Path(search.dir) / RESULTS, OmegaConf.to_yaml(OmegaConf.create(results)))
    log.info("best value %s: trial %d %s", best.value, best.number, best.params)
    return results
