"""``python -m heartgpt.prepare``: recordings (or the synthetic demo) -> tokenised HDF5 shards.

The job is :func:`heartgpt.training.preparation.prepare` (the work itself is done in
:mod:`heartgpt.data`); this module is the Hydra entry point (``conf/prepare.yaml``).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

import heartgpt.training.resolvers  # noqa: F401  (${cwd:} in conf/paths)
from heartgpt.errors import one_line_errors
from heartgpt.training.config_checks import PREPARE_CHECKS, check_values
from heartgpt.training.preparation import prepare
from heartgpt.training.renamed_keys import (
    PREPARE_RENAMES,
    check_config,
    run_checked,
)


@hydra.main(config_path="pkg://heartgpt.conf", config_name="prepare", version_base="1.3")
def hydra_main(cfg: DictConfig) -> None:
    """Hydra entry point: a bad setting, a run that writes nothing, an input that is not there
    is one error line (each bad record is a reported skip, never fatal)."""
    with one_line_errors():
        check_config(cfg, PREPARE_RENAMES)
        check_values(cfg, PREPARE_CHECKS)
        prepare(cfg)


def main() -> None:
    """``python -m heartgpt.prepare``: stops with one line on a config key heartgpt 0.1 used."""
    run_checked(hydra_main, PREPARE_RENAMES)


if __name__ == "__main__":
    main()
