"""A warning when CPU training processes and their DataLoader workers outnumber the cores."""

from __future__ import annotations

import logging
import os

import lightning as L
from lightning.pytorch.accelerators import CPUAccelerator

log = logging.getLogger(__name__)


def cpu_demand(processes: int, num_workers: int) -> int:
    """Busy processes of a CPU run: each training process and its loader workers."""
    return processes * (num_workers + 1)


class CpuBudget(L.Callback):
    """Warn once, at the start of fitting (rank 0), when training on CPUs asks for more busy
    processes -- ``trainer.devices`` x (``data.num_workers`` + 1) on this node -- than the
    machine has cores (``callbacks.cpu_budget``): they would all run, slowly, without a word."""

    def __init__(self) -> None:
        self._warned = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._warned or stage != "fit" or not trainer.is_global_zero:
            return
        if not isinstance(trainer.accelerator, CPUAccelerator):
            return
        cores = os.cpu_count() or 1
        processes = int(trainer.num_devices)
        workers = int(getattr(trainer.datamodule, "num_workers", 0) or 0)
        demand = cpu_demand(processes, workers)
        if demand > cores:
            self._warned = True
            log.warning(
                "%d CPU training processes x (%d loader workers + 1) = %d busy processes on %d "
                "cores: they will slow each other down; lower trainer.devices or data.num_workers",
                processes, workers, demand, cores)
