"""``python -m heartgpt.probe``: a linear probe of frozen embeddings (Hydra config
``conf/probe.yaml``), the way to compare checkpoints on a new target without fine-tuning.

    python -m heartgpt.predict mode=embed checkpoint=ECGPT_560k_iters.zip inputs=... out_dir=emb
    python -m heartgpt.probe predictions=emb labels=labels.csv target=hr_bpm
    python -m heartgpt.probe predictions=emb labels=labels.csv target=rhythm folds=10 C=0.1

:func:`heartgpt.training.probe.probe` is the whole job for a composed config
(:func:`compose_config`, from Python); :func:`main` is the Hydra entry point.
"""

from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig

import heartgpt.training.resolvers  # noqa: F401  (registers ${cwd:} before Hydra composes)
from heartgpt.training.entry import hydra_entry
from heartgpt.training.probe import PROBE_CHECKS, probe
from heartgpt.training.run import CONF_MODULE
from heartgpt.training.run import compose_config as _compose


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """``conf/probe.yaml`` composed with ``overrides``, as ``python -m heartgpt.probe`` would."""
    return _compose(overrides, config_name="probe")


@hydra.main(config_path=f"pkg://{CONF_MODULE}", config_name="probe", version_base="1.3")
@hydra_entry(required={"predictions": "<the out_dir of predict mode=embed>",
                       "labels": "<a CSV: record, subject, target columns>",
                       "target": "<the labels column to predict>"},
             value_checks=PROBE_CHECKS)
def hydra_main(cfg: DictConfig) -> dict[str, Any]:
    """Hydra entry point; what cannot be used is one error line, exit status 1."""
    return probe(cfg)


def main() -> dict[str, Any] | None:
    """``python -m heartgpt.probe``."""
    return hydra_main()


if __name__ == "__main__":
    main()
