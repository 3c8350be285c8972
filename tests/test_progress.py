"""Progress as log lines when stdout is not a terminal (callbacks.progress), the step-based Rich
bar description, and the CPU oversubscription warning."""

from __future__ import annotations

import logging
import os
from types import SimpleNamespace

import pytest
from lightning.pytorch.accelerators import CPUAccelerator

from heartgpt.training.callbacks import (
    CpuBudget,
    Progress,
    ProgressLog,
    StepRichProgressBar,
    progress_bar,
)
from heartgpt.training.run import train
from training_helpers import FAST, build_tiny_demo, compose_train

PROGRESS = "heartgpt.training.callbacks.progress"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fake_trainer(step: int = 0) -> SimpleNamespace:
    return SimpleNamespace(global_step=step, max_steps=100, is_global_zero=True,
                           progress_bar_metrics={"train/loss": 2.5, "v_num": 0},
                           estimated_stepping_batches=100)


def started(log_every_s: float, caplog) -> tuple[FakeClock, ProgressLog, SimpleNamespace]:
    """A ProgressLog on a fake clock and trainer, training started, its lines captured."""
    clock = FakeClock()
    cb = ProgressLog(log_every_s=log_every_s, clock=clock)
    trainer = fake_trainer()
    cb.on_train_start(trainer, None)
    caplog.set_level(logging.INFO, logger=PROGRESS)
    return clock, cb, trainer


def step_to(cb: ProgressLog, trainer: SimpleNamespace, step: int) -> None:
    trainer.global_step = step
    cb.on_train_batch_end(trainer, None, None, None, step - 1)


def test_progress_lines_every_interval(caplog):
    clock, cb, trainer = started(30, caplog)
    for t, step in ((10, 10), (29.9, 29), (30, 30), (45, 45), (59.9, 59), (60.1, 60)):
        clock.now = 1000.0 + t
        step_to(cb, trainer, step)
    lines = [r.getMessage() for r in caplog.records if r.name == PROGRESS]
    assert len(lines) == 2, lines  # at 30 s and 60.1 s: 30 s apart, not at every step
    assert lines[0] == ("step 30/100 (30%) | train/loss 2.5 | 1 it/s | elapsed 0:00:30 | "
                        "ETA 0:01:10")
    assert lines[1].startswith("step 60/100 (60%)") and "elapsed 0:01:00" in lines[1]


def test_progress_every_step_and_not_on_other_ranks(caplog):
    clock, cb, trainer = started(0, caplog)
    for step in (1, 2, 3):
        clock.now += 1
        step_to(cb, trainer, step)
    trainer.is_global_zero = False
    cb.on_train_batch_end(trainer, None, None, None, 3)
    assert len([r for r in caplog.records if r.name == PROGRESS]) == 3


def test_progress_mode_choice():
    assert isinstance(progress_bar("rich"), StepRichProgressBar)
    assert progress_bar("log", log_every_s=5).log_every_s == 5
    assert isinstance(progress_bar("auto"), ProgressLog)  # pytest captures stdout: not a TTY
    assert isinstance(Progress(mode="log", log_every_s=1), ProgressLog)  # the config's _target_
    with pytest.raises(ValueError, match="auto, rich, log"):
        progress_bar("tqdm")


def test_rich_bar_has_no_negative_epoch_total():
    bar = StepRichProgressBar()
    bar._trainer = SimpleNamespace(max_epochs=-1)
    assert bar._get_train_description(1).strip() == "Epoch 1"
    bar._trainer = SimpleNamespace(max_epochs=5)
    assert bar._get_train_description(1).strip() == "Epoch 1/4"


def test_a_run_without_a_terminal_logs_progress(tmp_path, caplog):
    data = build_tiny_demo(tmp_path / "data")
    out = tmp_path / "run"
    cfg = compose_train([*FAST, "callbacks.progress.log_every_s=0"], data_dir=data,
                        output_dir=out, log_dir=tmp_path / "logs")
    caplog.set_level(logging.INFO, logger=PROGRESS)
    train(cfg)
    lines = [r.getMessage() for r in caplog.records if r.name == PROGRESS]
    steps = [line for line in lines if line.startswith("step ")]
    assert [s.split(" | ")[0] for s in steps] == [f"step {i}/6 ({100 * i / 6:.0f}%)"
                                                  for i in range(1, 7)]
    assert all("train/loss" in s and "it/s" in s and "ETA" in s for s in steps), steps
    assert sum(line.startswith("validation at step") for line in lines) == 2
    assert any(line.startswith("test: test/loss") for line in lines)


def test_cpu_oversubscription_warning(monkeypatch, caplog):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    trainer = SimpleNamespace(is_global_zero=True, accelerator=CPUAccelerator(), num_devices=4,
                              datamodule=SimpleNamespace(num_workers=2))
    cb = CpuBudget()
    caplog.set_level(logging.WARNING, logger="heartgpt.training.callbacks.resources")
    cb.setup(trainer, None, "fit")
    cb.setup(trainer, None, "fit")
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == ["4 CPU training processes x (2 loader workers + 1) = 12 busy processes on "
                        "2 cores: they will slow each other down; lower trainer.devices or "
                        "data.num_workers"]
    caplog.clear()
    trainer.num_devices, trainer.datamodule.num_workers = 1, 1  # 2 busy processes on 2 cores
    CpuBudget().setup(trainer, None, "fit")
    assert not caplog.records
