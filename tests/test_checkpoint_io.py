"""Checkpoint I/O without the shared data: bad files get clear errors; exports round-trip."""

from __future__ import annotations

import zipfile

import pytest
import torch

from heartgpt.model import GPT, GPTConfig
from heartgpt.model.checkpoint_format import CheckpointError
from heartgpt.model.checkpoints import init_from_pretrained, load_model
from heartgpt.model.safetensors_file import save_safetensors


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_model(tmp_path / "nope.pth")


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("hello")
    with pytest.raises(CheckpointError, match="notes.pth: cannot read as a torch checkpoint"):
        load_model(path)


def test_state_dict_missing_keys(tmp_path):
    path = tmp_path / "partial.pth"
    torch.save({"token_embedding_table.weight": torch.zeros(101, 64)}, path)
    with pytest.raises(CheckpointError, match=r"partial.pth: not a HeartGPT state dict; missing"):
        load_model(path)


def test_arbitrary_objects_are_not_unpickled(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"x": object()}, path)  # needs full unpickling, refused by weights_only
    with pytest.raises(CheckpointError, match="evil.pth"):
        load_model(path)


def test_zip_without_one_pth(tmp_path):
    path = tmp_path / "two.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a.pth", b"1")
        zf.writestr("b.pth", b"2")
    with pytest.raises(CheckpointError, match="expected exactly one"):
        load_model(path)


def test_safetensors_from_elsewhere(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="not a heartgpt safetensors export"):
        load_model(path)


def test_safetensors_round_trip_tiny(tmp_path):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=102, block_size=16, n_embd=16, n_head=2, n_layer=1,
                          out_features=1)).eval()
    loaded = load_model(save_safetensors(model, tmp_path / "m.safetensors", "ppg", task="af"))
    assert (loaded.modality, loaded.task) == ("ppg", "af")
    idx = torch.randint(0, 102, (1, 16))
    with torch.no_grad():
        assert torch.equal(loaded.model(idx), model(idx))


@pytest.mark.parametrize("out_features", [None, 1])
def test_released_layout_round_trip(tmp_path, out_features):
    from heartgpt.model.released import to_released_state_dict

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=102, block_size=24, n_embd=16, n_head=4, n_layer=2,
                          attn_scale=16**-0.5, out_features=out_features)).eval()
    path = tmp_path / "exported.pth"
    torch.save(to_released_state_dict(model), path)
    loaded = load_model(path)
    assert loaded.model.config == model.config
    idx = torch.randint(0, 102, (2, 24))
    with torch.no_grad():
        assert torch.equal(loaded.model(idx), model(idx))


def test_released_layout_refuses_other_scale():
    from heartgpt.model.released import to_released_state_dict

    with pytest.raises(ValueError, match="scales attention"):
        to_released_state_dict(GPT(GPTConfig(n_layer=1, attn_scale=None)))


def test_a_fine_tune_of_another_task_cannot_start_a_fine_tune(tmp_path):
    """A beat model as ``module.pretrained`` of an AF fine-tune is refused, naming the file."""
    config = GPTConfig(vocab_size=102, block_size=32, n_embd=16, n_head=2, n_layer=1,
                       out_features=1)
    beats = save_safetensors(GPT(config), tmp_path / "beats.safetensors", modality="ppg",
                             task="beats")
    lm = save_safetensors(GPT(GPTConfig(**{**config.to_dict(), "out_features": None})),
                          tmp_path / "lm.safetensors", modality="ppg")
    with pytest.raises(CheckpointError, match="beats.safetensors: is fine-tuned for beats; it "
                                              "cannot start task af"):
        init_from_pretrained(GPT(config), beats, modality="ppg", task="af")
    init_from_pretrained(GPT(config), beats, modality="ppg", task="beats")  # continuing: fine
    init_from_pretrained(GPT(config), lm, modality="ppg", task="af")  # the paper's recipe
