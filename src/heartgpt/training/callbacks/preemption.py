"""A clean, checkpointed stop on SIGTERM (SLURM's pre-emption signal), in every rank.

Lightning's own SIGTERM handling kills the other processes and raises in each rank wherever it
is, so a signalled multi-process run prints a traceback per process (DataLoader workers killed
by the signal, gloo connections closed by peers). :class:`Preemption` (``callbacks.preemption``)
takes the signal over while fitting:

* the handler only sets a flag;
* at the next training-batch boundary all ranks agree (``reduce_boolean_decision``: any rank
  signalled is enough), save ``<checkpoint dir>/last.ckpt`` together (what ``ckpt_path=last``
  resumes), log where it is and how to resume, and raise :class:`Preempted` (a ``SystemExit``:
  no traceback);
* DataLoader workers ignore SIGTERM (workers receive it too when the process group or SLURM job
  is signalled); they stop when their process does.

Exit status: :data:`PREEMPTED_EXIT_CODE` (143, as a shell reports a process ended by SIGTERM) in
local rank 0 -- so that scripts and schedulers see the job did not finish -- and 0 in the other
local ranks (Lightning SIGKILLs the whole job when a process it launched exits non-zero).

A signal arriving during validation is honoured after it, at the next training batch; outside
fitting (``test=true`` after fitting) Lightning's handling applies.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.utilities.seed import pl_worker_init_function
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from torch.utils.data import DataLoader

log = logging.getLogger(__name__)

PREEMPTED_EXIT_CODE = 128 + signal.SIGTERM  # 143
_LOADER_HOOKS = ("train_dataloader", "val_dataloader", "test_dataloader", "predict_dataloader")


class Preempted(SystemExit):
    """Raised in every rank once a SIGTERM was honoured (after the checkpoint was written)."""


class Preemption(L.Callback):
    """Turn SIGTERM into a checkpoint at the next training batch and a clean exit (module doc)."""

    def __init__(self, exit_code: int = PREEMPTED_EXIT_CODE) -> None:
        self.exit_code = int(exit_code)
        self.requested = False  # a SIGTERM reached this process

    def handle_signal(self, signum: int, frame: Any) -> None:
        """The SIGTERM handler: only sets the flag (no I/O in a signal handler)."""
        self.requested = True

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        ignore_sigterm_in_workers(trainer)
        if stage != "fit":
            return
        connector = getattr(trainer, "_signal_connector", None)
        if connector is None or getattr(connector, "_heartgpt_preemption", None) is self:
            return
        # Lightning (2.x) installs its SIGTERM handler in `_SignalConnector.register_signal_handlers`
        # just before running the stage (and restores the previous one at teardown): put ours over
        # it while fitting.
        register = connector.register_signal_handlers

        @functools.wraps(register)
        def register_then_take_sigterm() -> None:
            register()
            fitting = trainer.state.fn == TrainerFn.FITTING
            if fitting and threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, self.handle_signal)

        connector.register_signal_handlers = register_then_take_sigterm
        connector._heartgpt_preemption = self

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if not trainer.strategy.reduce_boolean_decision(self.requested, all=False):
            return
        path = checkpoint_path(trainer)
        callback = trainer.checkpoint_callback
        if isinstance(callback, ModelCheckpoint):
            callback.last_model_path = str(path)
        trainer.save_checkpoint(path, weights_only=False)  # every rank: written once, then a barrier
        trainer.should_stop = True
        if trainer.is_global_zero:
            log.warning("SIGTERM: stopped at step %d; checkpoint saved to %s. Resume with the same "
                        "command plus `ckpt_path=%s` (or `ckpt_path=last`)",
                        trainer.global_step, path, path)
        raise Preempted(self.exit_code if trainer.local_rank == 0 else 0)


def checkpoint_path(trainer: L.Trainer) -> Path:
    """``last.ckpt`` in the ModelCheckpoint's folder (else ``<default_root_dir>/checkpoints``)."""
    callback = trainer.checkpoint_callback
    if isinstance(callback, ModelCheckpoint) and callback.dirpath:
        return Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"
    return Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"


class _IgnoreSigterm:
    """A DataLoader ``worker_init_fn``: ignore SIGTERM, then run the loader's own init function
    (or Lightning's worker seeding, which it adds only to loaders without one)."""

    def __init__(self, inner: Any, rank: int) -> None:
        self.inner, self.rank = inner, rank

    def __call__(self, worker_id: int) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if self.inner is not None:
            self.inner(worker_id)
        elif int(os.environ.get("PL_SEED_WORKERS", 0)):
            pl_worker_init_function(worker_id, rank=self.rank)


def _quiet_workers(loaders: Any, rank: int) -> Any:
    if isinstance(loaders, DataLoader):
        if loaders.num_workers > 0 and not isinstance(loaders.worker_init_fn, _IgnoreSigterm):
            loaders.worker_init_fn = _IgnoreSigterm(loaders.worker_init_fn, rank)
    elif isinstance(loaders, (list, tuple)):
        for loader in loaders:
            _quiet_workers(loader, rank)
    elif isinstance(loaders, dict):
        for loader in loaders.values():
            _quiet_workers(loader, rank)
    return loaders


def ignore_sigterm_in_workers(trainer: L.Trainer) -> None:
    """Make the DataLoader workers of ``trainer.datamodule``'s loaders ignore SIGTERM."""
    datamodule = trainer.datamodule
    if datamodule is None:
        return
    for name in _LOADER_HOOKS:
        method = getattr(datamodule, name, None)
        if method is None or getattr(method, "_ignores_sigterm", False):
            continue

        def wrapped(*args: Any, _method: Any = method, **kwargs: Any) -> Any:
            return _quiet_workers(_method(*args, **kwargs), trainer.global_rank)

        functools.update_wrapper(wrapped, method)  # __wrapped__: Lightning's is_overridden
        wrapped._ignores_sigterm = True  # type: ignore[attr-defined]
        setattr(datamodule, name, wrapped)
