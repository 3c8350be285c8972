"""What every run command does before its job: the preamble of the Hydra entry points of
``heartgpt.train``, ``heartgpt.eval`` and ``heartgpt.predict``.

:func:`hydra_entry` wraps a command's job (a function of the composed config), below its
``@hydra.main``::

    @hydra.main(config_path=f"pkg://{CONF_MODULE}", config_name="eval", version_base="1.3")
    @hydra_entry(renames=TRAIN_RENAMES, required={"checkpoint": CHECKPOINT_WANTED})
    def hydra_main(cfg: DictConfig) -> dict[str, Any]:
        return evaluate(cfg)

The wrapper keeps the job's module and name (``functools.wraps``): Hydra names the job, and so
its log file (``train.log``, ``eval.log``), after the function it unwraps to.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from heartgpt.errors import one_line_errors
from heartgpt.training.config_checks import Check, check_values, require_given
from heartgpt.training.console import quiet_known_noise
from heartgpt.training.renamed_keys import check_config

T = TypeVar("T")


def route_lightning_logs() -> None:
    """Send Lightning's log records through Hydra's handlers (console and ``<job>.log``).

    Lightning gives its loggers their own console handler, without propagation, when it is
    imported before logging is configured, which would leave the run's log file empty.
    """
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if type(h) is logging.StreamHandler]:
            logger.removeHandler(handler)
        logger.propagate = True


def hydra_entry(renames: Iterable[tuple[str, str]] | None = None,
                required: Mapping[str, str] | None = None,
                value_checks: dict[str, Check] | None = None,
                checks: Iterable[Callable[[DictConfig], None]] = (),
                ) -> Callable[[Callable[[DictConfig], T]], Callable[[DictConfig], T]]:
    """Decorate a command's job with the run preamble, in this order: Lightning's logs routed
    to Hydra's handlers (:func:`route_lightning_logs`), known library noise silenced, then,
    inside :func:`heartgpt.errors.one_line_errors` (a failure the user can fix is one error
    line; the run directory of a run that never started is removed, up to ``paths.log_dir``):

    - ``renames``: a config key of an older heartgpt in the composed config stops the run
      (:func:`heartgpt.training.renamed_keys.check_config`); None: not checked;
    - ``required``: ``{key: what it wants}``, keys that must be given (in this order);
    - the values of :data:`~heartgpt.training.config_checks.CHECKS` and ``value_checks``;
    - ``checks``: the command's own checks of the config, in order;

    and then the job."""
    renames = tuple(renames) if renames is not None else None
    checks = tuple(checks)

    def wrap(job: Callable[[DictConfig], T]) -> Callable[[DictConfig], T]:
        @functools.wraps(job)
        def entry(cfg: DictConfig) -> T:
            route_lightning_logs()
            quiet_known_noise()
            with one_line_errors(run_dir=HydraConfig.get().runtime.output_dir,
                                 root=OmegaConf.select(cfg, "paths.log_dir",
                                                       throw_on_resolution_failure=False)):
                if renames is not None:
                    check_config(cfg, renames)
                for key, wanted in (required or {}).items():
                    require_given(cfg, key, wanted)
                check_values(cfg, value_checks)
                for check in checks:
                    check(cfg)
                return job(cfg)

        return entry

    return wrap
