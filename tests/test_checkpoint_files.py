"""Lightning ``.ckpt`` files of training (``SafeCheckpointIO``): a save never leaves a truncated
file, a crafted file cannot run code when resumed from, an empty one is one clear error."""

from __future__ import annotations

import os

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.plugins.io import TorchCheckpointIO

from heartgpt.model.checkpoint_format import CheckpointError
from heartgpt.model.checkpoints import load_model
from heartgpt.training.checkpoint_io import SafeCheckpointIO
from training_helpers import compose_train


class Payload:
    """Unpickling it makes a folder: the stand-in for arbitrary code."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_a_failed_save_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    io = SafeCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "w": torch.ones(3)}, path)
    before = path.read_bytes()

    def dies_half_way(obj, f, *args, **kwargs):
        with open(f, "wb") as out:
            out.write(before[: len(before) // 2])
        raise KeyboardInterrupt  # killed during the write

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 2, "w": torch.zeros(3)}, path)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary left
    monkeypatch.undo()
    assert io.load_checkpoint(path)["global_step"] == 1


def test_a_crafted_checkpoint_cannot_run_code(tmp_path, monkeypatch):
    marker = tmp_path / "payload_ran"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "x": Payload(str(marker))}, path)
    with pytest.raises(CheckpointError, match=r"evil.ckpt: cannot read as a Lightning "
                                             r"checkpoint") as e:
        SafeCheckpointIO().load_checkpoint(path)
    assert "weights_only" not in str(e.value)  # no advice to turn the protection off
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(CheckpointError, match=r"evil.ckpt: \$TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD "
                                             r"is set"):
        SafeCheckpointIO().load_checkpoint(path)
    with pytest.raises(CheckpointError, match="TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is set"):
        load_model(path)  # heartgpt's own loaders refuse it too
    assert not marker.exists()
    TorchCheckpointIO().load_checkpoint(path)  # Lightning's own loader, with that variable set,
    assert marker.exists()  # ... runs it: what the plugin guards against


def test_an_empty_checkpoint_is_one_clear_error(tmp_path):
    path = tmp_path / "last.ckpt"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"last.ckpt: is empty \(0 bytes\)"):
        SafeCheckpointIO().load_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"last.ckpt: is empty \(0 bytes\)"):
        load_model(path)


def test_the_trainer_config_uses_it(tmp_path):
    cfg = compose_train([], data_dir=tmp_path / "data", output_dir=tmp_path / "run",
                        log_dir=tmp_path / "logs")
    trainer: L.Trainer = instantiate(cfg.trainer, logger=False, _convert_="all")
    assert isinstance(trainer.strategy.checkpoint_io, SafeCheckpointIO)


def test_ckpt_path_last_passes_over_a_truncated_newest_checkpoint(tmp_path, caplog):
    import time

    from heartgpt.training.resume import resolve_ckpt_path

    io = SafeCheckpointIO()
    good = tmp_path / "runs" / "a" / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"global_step": 5}, good)
    time.sleep(0.01)
    cut = tmp_path / "runs" / "b" / "checkpoints" / "last.ckpt"
    cut.parent.mkdir(parents=True)
    cut.write_bytes(good.read_bytes()[:100])  # newer, but cut short
    with caplog.at_level("WARNING"):
        assert resolve_ckpt_path("last", tmp_path / "new_run", tmp_path / "runs") == str(good)
    assert f"passing over {cut}" in caplog.text
