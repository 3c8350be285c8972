"""``python -m heartgpt.train``: pre-train or fine-tune HeartGPT (Hydra config ``conf/train.yaml``).

The Hydra entry point only: :func:`heartgpt.training.run.train` is the whole job for a composed
config (tests and notebooks call it directly, with
:func:`heartgpt.training.run.compose_config`). The override cookbook is in ``docs/training.md``.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf

from heartgpt.errors import ConfigError
from heartgpt.training.entry import hydra_entry
from heartgpt.training.renamed_keys import TRAIN_RENAMES, run_checked
from heartgpt.training.run import CONF_MODULE, train


def _check_lora_task(cfg: DictConfig) -> None:
    """``finetune=lora`` adapts a fine-tuning task; pre-training has nothing to adapt."""
    target = str(OmegaConf.select(cfg, "module._target_", default=""))
    if OmegaConf.select(cfg, "module.lora") and not target.endswith("FinetuneModule"):
        raise ConfigError("finetune", "lora adapts a fine-tuning task (task=af, task=beats), "
                                      "not pre-training: drop finetune=lora")


@hydra.main(config_path=f"pkg://{CONF_MODULE}", config_name="train", version_base="1.3")
@hydra_entry(renames=TRAIN_RENAMES, checks=(_check_lora_task,))
def hydra_main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns the optimised metric for sweepers. A failure the user can fix
    (data, checkpoint, config value) is one error line, and the run directory of a run that
    never started is removed."""
    return train(cfg)


def main() -> float | None:
    """``python -m heartgpt.train``: stops with one line on a config key heartgpt 0.1 used."""
    return run_checked(hydra_main, TRAIN_RENAMES)


if __name__ == "__main__":
    main()
