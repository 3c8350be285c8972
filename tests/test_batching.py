"""The global batch (``heartgpt.batching``; ``heartgpt.training.batching`` applies it): per-process
micro batch and gradient accumulation follow from ``data.global_batch_size``,
``data.micro_batch_size`` and the world size."""

from __future__ import annotations

import pytest

from heartgpt.batching import BatchPlan, plan_batches
from heartgpt.errors import ConfigError
from heartgpt.training.renamed_keys import TRAIN_RENAMES, RenamedKeyError, check_overrides


@pytest.mark.parametrize(("global_", "micro", "world", "plan"), [
    (64, None, 1, BatchPlan(64, 64, 1, 1)),
    (64, None, 4, BatchPlan(64, 16, 1, 4)),
    (64, 8, 4, BatchPlan(64, 8, 2, 4)),
    (64, 8, 1, BatchPlan(64, 8, 8, 1)),
    (128, 16, 8, BatchPlan(128, 16, 1, 8)),
])
def test_the_plan_keeps_the_global_batch(global_, micro, world, plan):
    got = plan_batches(global_, micro, world)
    assert got == plan
    assert got.micro_batch_size * got.accumulate_grad_batches * got.world_size == global_


@pytest.mark.parametrize(("global_", "micro", "world", "key", "words"), [
    (64, None, 3, "data.global_batch_size", "64 does not divide over 3 processes"),
    (64, 12, 4, "data.micro_batch_size", "12 does not divide the 16 sequences"),
    (64, 32, 4, "data.micro_batch_size", "32 does not divide the 16 sequences"),
])
def test_what_does_not_divide_is_refused_naming_the_key(global_, micro, world, key, words):
    with pytest.raises(ConfigError) as e:
        plan_batches(global_, micro, world)
    assert str(e.value).startswith(f"{key}: ") and words in str(e.value)


def test_the_per_process_key_of_before_names_its_successor():
    with pytest.raises(RenamedKeyError, match=r"'data.batch_size' is now 'data.global_batch_size' "
                                              r"\(it counts windows over all devices"):
        check_overrides(["data.batch_size=8"], TRAIN_RENAMES)


def test_accumulation_is_not_set_by_hand(tmp_path):
    from heartgpt.training.batching import apply_batch_plan
    from training_helpers import compose_train

    cfg = compose_train(["+trainer.accumulate_grad_batches=4"])

    class Trainer:
        world_size, loggers, is_global_zero, num_devices, num_nodes = 1, [], True, 1, 1

    with pytest.raises(ConfigError, match=r"^trainer.accumulate_grad_batches: follows from "
                                          r"data.global_batch_size"):
        apply_batch_plan(cfg, Trainer(), None)
