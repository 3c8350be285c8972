"""``python -m heartgpt.eval``: score a checkpoint on a shard set (Hydra config ``conf/eval.yaml``).

    python -m heartgpt.eval checkpoint=ECGPT_560k_iters.zip data.shard_dir=data/shards/ecg/unlabelled
    python -m heartgpt.eval task=af checkpoint=<our .ckpt> data.split=test trainer=ddp

:func:`heartgpt.training.evaluation.evaluate` is the whole job for a composed config
(:func:`compose_config`, from Python); :func:`main` is the Hydra entry point, the counterpart of
:mod:`heartgpt.train` sharing its config groups.
"""

from __future__ import annotations

from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

import heartgpt.training.resolvers  # noqa: F401  (registers ${cwd:} before Hydra composes)
from heartgpt.errors import one_line_errors
from heartgpt.train import CONF_MODULE, route_lightning_logs
from heartgpt.train import compose_config as _compose
from heartgpt.training.config_checks import CHECKPOINT_WANTED, check_values, require_given
from heartgpt.training.console import quiet_known_noise
from heartgpt.training.evaluation import evaluate
from heartgpt.training.renamed_keys import (
    TRAIN_RENAMES,
    check_config,
    run_checked,
)


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """``conf/eval.yaml`` composed with ``overrides``, as ``python -m heartgpt.eval`` would."""
    return _compose(overrides, config_name="eval")


@hydra.main(config_path=f"pkg://{CONF_MODULE}", config_name="eval", version_base="1.3")
def hydra_main(cfg: DictConfig) -> dict[str, Any]:
    """Hydra entry point; a checkpoint or shard set that cannot be scored is one error line."""
    route_lightning_logs()
    quiet_known_noise()
    with one_line_errors(run_dir=HydraConfig.get().runtime.output_dir,
                         root=OmegaConf.select(cfg, "paths.log_dir",
                                               throw_on_resolution_failure=False)):
        check_config(cfg, TRAIN_RENAMES)
        require_given(cfg, "checkpoint", CHECKPOINT_WANTED)
        check_values(cfg)
        return evaluate(cfg)


def main() -> dict[str, Any] | None:
    """``python -m heartgpt.eval``: stops with one line on a config key heartgpt 0.1 used."""
    return run_checked(hydra_main, TRAIN_RENAMES)


if __name__ == "__main__":
    main()
