"""``sweeps/demo_af_freeze_lora.yaml``: the W&B sweep of freeze x LoRA builds, through W&B's
own command macros (``${args_no_hyphens}``), the Hydra command of every grid point, and each
composes the fine-tuning it names."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from training_helpers import compose_train

SWEEP = Path(__file__).parents[1] / "sweeps" / "demo_af_freeze_lora.yaml"


def agent_command(sweep: dict, params: dict) -> list[str]:
    """The command a W&B agent runs for one set of sweep parameters (wandb_agent's expansion
    of the sweep's ``command``: ``${env}`` and the ``${args...}`` macros)."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

    macros = create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
    macros["env"] = ["/usr/bin/env"]
    out: list[str] = []
    for chunk in create_sweep_command(list(sweep["command"])):
        out += macros[chunk[2:-1]] if chunk.startswith("${") and chunk.endswith("}") else [chunk]
    return out


def grid(sweep: dict) -> list[dict]:
    params = sweep["parameters"]
    keys = list(params)
    values = [params[k]["values"] if "values" in params[k] else [params[k]["value"]] for k in keys]
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*values)]


def test_the_sweep_is_a_grid_of_freeze_and_lora_on_the_af_metric():
    sweep = OmegaConf.to_container(OmegaConf.load(SWEEP))
    assert (sweep["method"], sweep["metric"]) == ("grid", {"name": "val/auroc", "goal": "maximize"})
    assert "${args_no_hyphens}" in sweep["command"]
    points = grid(sweep)
    assert {(p["freeze"], p["finetune"]) for p in points} == set(itertools.product(
        ["head", "last_block", "full"], ["none", "lora"]))


@pytest.mark.parametrize(("freeze", "finetune"), [("head", "none"), ("last_block", "lora"),
                                                   ("full", "lora")])
def test_each_run_is_the_hydra_command_of_its_parameters(freeze, finetune, tmp_path):
    sweep = OmegaConf.to_container(OmegaConf.load(SWEEP))
    command = agent_command(sweep, {"experiment": "demo_af", "freeze": freeze,
                                    "finetune": finetune})
    assert command[:4] == ["/usr/bin/env", "python", "-m", "heartgpt.train"]
    overrides = command[4:]
    assert overrides == ["experiment=demo_af", f"freeze={freeze}", f"finetune={finetune}",
                         "logger.wandb.offline=false"]
    cfg = compose_train(overrides, output_dir=tmp_path / "run", log_dir=tmp_path / "logs")
    assert cfg.run_name == "af_ecg" and cfg.module.task == "af"
    assert cfg.freeze.strategy == freeze
    assert (cfg.module.get("lora") is not None) == (finetune == "lora")
    assert cfg.logger.wandb.offline is False and cfg.optimized_metric == sweep["metric"]["name"]
