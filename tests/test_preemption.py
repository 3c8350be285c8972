"""SIGTERM (SLURM's pre-emption signal) is a clean, checkpointed stop: in-process, and (slow) for a
2-process ddp_cpu run signalled as a process group, then resumed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from heartgpt.training.callbacks import Preempted, Preemption
from heartgpt.training.callbacks.preemption import PREEMPTED_EXIT_CODE
from heartgpt.training.run import instantiate_all, train
from training_helpers import FAST, build_tiny_demo, compose_train, run_module

# The noise of an unclean multi-process stop (tracebacks of every rank and loader worker).
UNCLEAN = ("Traceback", "killed by signal", "Connection closed by peer", "exited unexpectedly",
           "SIGTERMException", "Error")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return build_tiny_demo(tmp_path_factory.mktemp("data"))


class SignalAtStep(L.Callback):
    """Deliver a SIGTERM to the Preemption callback's handler after training step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            handler = signal.getsignal(signal.SIGTERM)
            assert getattr(handler, "__self__", None).__class__ is Preemption, handler
            handler(signal.SIGTERM, None)  # as the signal would, without signalling pytest


def test_sigterm_saves_last_and_stops_at_the_next_step(data_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    cfg = compose_train([*FAST, "trainer.max_steps=50", "trainer.val_check_interval=100",
                         "test=true"], data_dir=data_dir, output_dir=out, log_dir=tmp_path / "logs")
    real = instantiate_all
    monkeypatch.setattr("heartgpt.training.run.instantiate_all",
                        lambda group: [*real(group), SignalAtStep(2)] if group is cfg.callbacks
                        else real(group))
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Preempted) as stopped:
        train(cfg)
    assert stopped.value.code == PREEMPTED_EXIT_CODE
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 3  # the step running when the signal came was finished
    assert not (out / "test_metrics.json").exists()  # no test after a pre-emption
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is not left behind


@pytest.mark.slow
def test_ddp_cpu_sigterm_is_a_clean_checkpointed_exit(data_dir, tmp_path):
    out, log = tmp_path / "run", tmp_path / "output.log"
    args = [*FAST, "model.n_layer=1", "model.n_embd=16", "model.n_head=2", "trainer=ddp_cpu",
            "trainer.devices=2", "logger=csv", "trainer.val_check_interval=1000",
            "data.num_workers=1", "callbacks.progress.log_every_s=0", "test=false",
            f"paths.data_dir={data_dir}"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "heartgpt.train", *args, "trainer.max_steps=100000",
             f"hydra.run.dir={out}"], cwd=tmp_path, env=env, stdout=f, stderr=subprocess.STDOUT,
            start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while "step 2/100000" not in log.read_text():  # a progress line: training is under way
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        sent = time.monotonic()
        os.killpg(proc.pid, signal.SIGTERM)  # as SLURM does: every process of the job
        rc = proc.wait(timeout=30)
        while _group_alive(proc.pid):  # the other rank and the loader workers too
            assert time.monotonic() - sent < 30, "processes left running 30 s after SIGTERM"
            time.sleep(0.2)
    finally:
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text()
    assert rc == PREEMPTED_EXIT_CODE, text[-3000:]
    for bad in UNCLEAN:
        assert bad not in text, text[-3000:]
    last = out / "checkpoints" / "last.ckpt"
    assert f"checkpoint saved to {last}" in text
    step = torch.load(last, weights_only=False)["global_step"]
    assert step >= 2

    resumed = run_module([*args, f"trainer.max_steps={step + 1}", f"ckpt_path={last}",
                          f"hydra.run.dir={tmp_path / 'resumed'}"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ckpt = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == step + 1


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
