"""The registry of head kinds (heartgpt.heads.registry): a new kind is a class, one registry entry
and one task yaml, and a run builds, checks and trains it like the kinds heartgpt ships."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from heartgpt.errors import ConfigError
from heartgpt.heads.objectives import BinaryObjective
from heartgpt.heads.reductions import Reduction
from heartgpt.heads.registry import (
    build_head,
    head_kinds,
    misread_by_tools,
    register_head_kind,
    unregister_head_kind,
)
from heartgpt.heads.task_head import HeadKind, TaskHead
from heartgpt.training.config_checks import check_values
from training_helpers import TINY_MODEL, compose_train


class MaxPosition(Reduction):
    """The new kind's one class: the largest output over positions."""

    def forward(self, outputs: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        return outputs.max(dim=1).values  # (B, n_out)


def build_peak(spec, n_embd: int) -> TaskHead:
    return TaskHead(spec["kind"], MaxPosition(), BinaryObjective(spec.get("pos_weight")))


PEAK = HeadKind("peak", build_peak, (BinaryObjective,))

PEAK_TASK = """\
# @package _global_
defaults:
  - _finetune
  - _self_

run_name: peak_${modality.name}
optimized_metric: val/auroc

module:
  task: peak
  head:
    kind: peak
    outputs: 1
    pos_weight: null

data:
  label_kind: sequence
"""


@pytest.fixture
def peak(tmp_path):
    """The ``peak`` kind registered and its task yaml in a config dir of its own."""
    (tmp_path / "conf" / "task").mkdir(parents=True)
    (tmp_path / "conf" / "task" / "peak.yaml").write_text(PEAK_TASK)
    register_head_kind(PEAK)
    try:
        yield tmp_path / "conf"
    finally:
        unregister_head_kind(PEAK.name)


def test_a_new_head_kind_is_a_class_an_entry_and_a_yaml(peak, tmp_path):
    cfg = compose_train(["task=peak", f"hydra.searchpath=[file://{peak}]", *TINY_MODEL],
                        data_dir=tmp_path / "data", output_dir=tmp_path / "out")
    assert cfg.module.head.kind == "peak"
    check_values(cfg)  # the config checks read the registry: `peak` is a kind now
    module = instantiate(cfg.module, _convert_="all")  # as a run builds it: build_head
    assert isinstance(module.task_head.reduction, MaxPosition)
    assert module.model.config.out_features == 1

    module.eval()  # no dropout: the two forwards below agree
    tokens = torch.randint(0, 101, (3, 16))
    outputs = module(tokens)  # (3, 1): the max over positions of the per-position outputs
    torch.testing.assert_close(outputs, module.model(tokens).max(dim=1).values)
    loss = module.task_head.objective.loss(outputs, torch.tensor([0.0, 1.0, 1.0]))
    loss.backward()
    assert torch.isfinite(loss) and module.model.head.weight.grad is not None
    # the tools read only the kinds they were made for
    assert "no probability tool reads" in misread_by_tools(dict(cfg.module.head), False)


def test_an_unregistered_kind_is_refused_everywhere(peak, tmp_path):
    cfg = compose_train(["task=peak", f"hydra.searchpath=[file://{peak}]", *TINY_MODEL],
                        data_dir=tmp_path / "data", output_dir=tmp_path / "out")
    with pytest.raises(ValueError, match="already registered"):
        register_head_kind(PEAK)
    unregister_head_kind(PEAK.name)
    try:
        assert PEAK.name not in head_kinds()
        with pytest.raises(ConfigError, match="module.head.kind: 'peak' is not one of"):
            check_values(cfg)
        with pytest.raises(ValueError, match="head.kind must be one of"):
            build_head({"kind": "peak"}, n_embd=16)
    finally:
        register_head_kind(PEAK)  # the fixture unregisters it
