"""``python -m heartgpt.predict``: one model, many recordings (Hydra config ``conf/predict.yaml``).

    python -m heartgpt.predict checkpoint=PPGPT_AF_1k_iters.zip inputs=recordings/ sample_rate=125
    python -m heartgpt.predict mode=beats checkpoint=PPGPT_beat_5k_iters.zip inputs='data/*.hea'
    python -m heartgpt.predict mode=loss checkpoint=ECGPT_560k_iters.zip inputs=[a.csv,b.npy] sample_rate=100
    python -m heartgpt.predict mode=embed checkpoint=... inputs=... trainer=ddp_cpu

:func:`heartgpt.inference.predictor.predict` is the whole job for a composed config;
:func:`main` is the Hydra entry point. A recording that cannot be read or predicted is a row
with its reason; settings, a checkpoint or inputs that cannot be used are one error line.
"""

from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig

import heartgpt.training.resolvers  # noqa: F401  (registers ${cwd:} and ${file_name:} first)
from heartgpt.training.config_checks import PREDICT_CHECKS
from heartgpt.training.entry import hydra_entry
from heartgpt.training.run import CONF_MODULE
from heartgpt.training.run import compose_config as _compose


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """``conf/predict.yaml`` composed with ``overrides``, as ``python -m heartgpt.predict`` would."""
    return _compose(overrides, config_name="predict")


@hydra.main(config_path=f"pkg://{CONF_MODULE}", config_name="predict", version_base="1.3")
@hydra_entry(required={"checkpoint": "<a .ckpt, .safetensors, .onnx or released .zip/.pth>",
                       "inputs": "<a folder, glob, file or [list] of recordings>"},
             value_checks=PREDICT_CHECKS)
def hydra_main(cfg: DictConfig) -> dict[str, Any] | None:
    """Hydra entry point; what cannot be used is one error line, exit status 1."""
    from heartgpt.inference.predictor import predict

    return predict(cfg)


def main() -> dict[str, Any] | None:
    """``python -m heartgpt.predict``."""
    return hydra_main()


if __name__ == "__main__":
    main()
