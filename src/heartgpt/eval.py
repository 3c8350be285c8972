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
from omegaconf import DictConfig

import heartgpt.training.resolvers  # noqa: F401  (registers ${cwd:} before Hydra composes)
from heartgpt.training.config_checks import CHECKPOINT_WANTED
from heartgpt.training.entry import hydra_entry
from heartgpt.training.evaluation import evaluate
from heartgpt.training.renamed_keys import TRAIN_RENAMES, run_checked
from heartgpt.training.run import CONF_MODULE
from heartgpt.training.run import compose_config as _compose


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """``conf/eval.yaml`` composed with ``overrides``, as ``python -m heartgpt.eval`` would."""
    return _compose(overrides, config_name="eval")


@hydra.main(config_path=f"pkg://{CONF_MODULE}", config_name="eval", version_base="1.3")
@hydra_entry(renames=TRAIN_RENAMES, required={"checkpoint": CHECKPOINT_WANTED})
def hydra_main(cfg: DictConfig) -> dict[str, Any]:
    """Hydra entry point; a checkpoint or shard set that cannot be scored is one error line."""
    return evaluate(cfg)


def main() -> dict[str, Any] | None:
    """``python -m heartgpt.eval``: stops with one line on a config key heartgpt 0.1 used."""
    return run_checked(hydra_main, TRAIN_RENAMES)


if __name__ == "__main__":
    main()
