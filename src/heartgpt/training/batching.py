"""Applying the batch plan (:mod:`heartgpt.batching`) to a run: the Trainer's gradient
accumulation, the module's hyper-parameters and the loggers' from ``cfg.data``."""

from __future__ import annotations

import logging
from typing import Any

from heartgpt.batching import BatchPlan, plan_batches
from heartgpt.errors import ConfigError

log = logging.getLogger(__name__)


def apply_batch_plan(cfg: Any, trainer: Any, module: Any) -> BatchPlan:
    """Set ``trainer.accumulate_grad_batches`` from ``cfg.data``'s global and micro batch at the
    trainer's world size, keep the plan in the module's hyper-parameters (saved in every
    checkpoint) and the loggers', and log it once."""
    accumulate = cfg.trainer.get("accumulate_grad_batches")
    if accumulate not in (None, 1):
        raise ConfigError("trainer.accumulate_grad_batches",
                          "follows from data.global_batch_size and data.micro_batch_size "
                          f"(global = micro x accumulation x processes); set those, not {accumulate}")
    plan = plan_batches(int(cfg.data.global_batch_size), cfg.data.get("micro_batch_size"),
                        int(trainer.world_size))
    trainer.accumulate_grad_batches = plan.accumulate_grad_batches
    module.hparams["batch"] = plan.to_dict()
    for lg in trainer.loggers:
        lg.log_hyperparams({"batch": plan.to_dict()})
    if trainer.is_global_zero:
        log.info("%s (%d device(s) x %d node(s))", plan.describe(), trainer.num_devices,
                 trainer.num_nodes)
    return plan
