"""The global batch: one recipe on 1 device or 64.

A recipe states ``data.global_batch_size``: sequences per optimiser step, over every process.
``data.micro_batch_size`` is what one device holds per forward pass (null: as many as the global
batch leaves each process). The per-process batch and Lightning's ``accumulate_grad_batches``
follow from the world size (devices x nodes), as litgpt's pre-training derives them:

    global = micro x accumulation x world

so ``experiment=paper_ecg_pretrain`` trains at batch 64 whether it runs on one GPU or four.
This module is the arithmetic only (the DataModules' batch size follows from it);
:mod:`heartgpt.training.batching` applies a run's plan to its Trainer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from heartgpt.errors import ConfigError


@dataclass(frozen=True)
class BatchPlan:
    """How one optimiser step's ``global_batch_size`` sequences are spread."""

    global_batch_size: int
    micro_batch_size: int  # per process per forward pass
    accumulate_grad_batches: int  # forward passes per optimiser step, per process
    world_size: int  # processes (devices x nodes)

    def to_dict(self) -> dict[str, Any]:
        """The plan as the hyper-parameters and loggers record it."""
        return asdict(self)

    def describe(self) -> str:
        """One line for the log."""
        return (f"global batch {self.global_batch_size} = micro batch {self.micro_batch_size} x "
                f"{self.accumulate_grad_batches} accumulation step(s) x {self.world_size} "
                f"process(es)")


def plan_batches(global_batch_size: int, micro_batch_size: int | None, world_size: int
                 ) -> BatchPlan:
    """The :class:`BatchPlan` of a run, or :class:`ConfigError` naming the key that does not
    divide: the global batch must split evenly over the processes, and each process's share
    into micro batches."""
    if world_size < 1:
        raise ConfigError("trainer.devices", f"world size {world_size} is not positive")
    if global_batch_size % world_size:
        raise ConfigError("data.global_batch_size",
                          f"{global_batch_size} does not divide over {world_size} processes "
                          f"(devices x nodes): make it a multiple of {world_size}")
    per_process = global_batch_size // world_size
    micro = per_process if micro_batch_size is None else int(micro_batch_size)
    if micro > per_process or per_process % micro:
        raise ConfigError("data.micro_batch_size",
                          f"{micro} does not divide the {per_process} sequences each of "
                          f"{world_size} process(es) takes of the global batch "
                          f"{global_batch_size}")
    return BatchPlan(global_batch_size, micro, per_process // micro, world_size)
