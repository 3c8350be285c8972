"""``python -m heartgpt.calibrate``: temperature scaling and the out-of-distribution reference of
any checkpoint, fitted post hoc on labelled shards (Hydra config ``conf/calibrate.yaml``).

    python -m heartgpt.calibrate checkpoint=ECGPT_AF_1k_iters.zip data.shard_dir=<labelled shards>
    python -m heartgpt.calibrate task=classify module.head.outputs=4 checkpoint=<our .ckpt> ...

Writes a new ``.ckpt`` naming its source (path, sha256) that ``eval``, ``predict`` and
``load_model`` read; :func:`heartgpt.training.calibration_run.calibrate` is the whole job.
"""

from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig

import heartgpt.training.resolvers  # noqa: F401  (registers ${cwd:} before Hydra composes)
from heartgpt.training.calibration_run import calibrate
from heartgpt.training.config_checks import CHECKPOINT_WANTED
from heartgpt.training.entry import hydra_entry
from heartgpt.training.renamed_keys import TRAIN_RENAMES, run_checked
from heartgpt.training.run import CONF_MODULE


@hydra.main(config_path=f"pkg://{CONF_MODULE}", config_name="calibrate", version_base="1.3")
@hydra_entry(renames=TRAIN_RENAMES, required={"checkpoint": CHECKPOINT_WANTED})
def hydra_main(cfg: DictConfig) -> dict[str, Any]:
    """Hydra entry point; a checkpoint or shard set that cannot be calibrated is one error line."""
    return calibrate(cfg)


def main() -> dict[str, Any] | None:
    """``python -m heartgpt.calibrate``."""
    return run_checked(hydra_main, TRAIN_RENAMES)


if __name__ == "__main__":
    main()
