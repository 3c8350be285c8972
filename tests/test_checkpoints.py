"""Released HeartGPT checkpoints load into our GPT with the released outputs (../shared/reference)."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from heartgpt.model.checkpoint_format import CheckpointError
from heartgpt.model.checkpoints import check_vocab, load_model
from heartgpt.model.released import load_released
from heartgpt.model.safetensors_file import save_safetensors

pytestmark = pytest.mark.shared

PRETRAINED = {"example_context_ECG": "ECGPT_560k_iters", "example_context_PPG": "PPGPT_500k_iters"}
AF = {"example_context_ECG_AFib1": "ECGPT_AF_1k_iters", "example_context_PPG_AFib": "PPGPT_AF_1k_iters"}


@pytest.fixture(scope="module")
def released(weights_dir):
    names = [*PRETRAINED.values(), *AF.values(), "PPGPT_beat_5k_iters"]
    return {n: load_released(weights_dir / f"{n}.zip") for n in names}


@pytest.mark.parametrize("name", sorted(PRETRAINED))
def test_pretrained_parity(name, released, reference_dir):
    ref = np.load(reference_dir / f"{name}.npz")
    loaded = released[PRETRAINED[name]]
    assert loaded.task == "pretrain"
    assert loaded.model.config.vocab_size == int(ref["vocab_size"])
    idx = torch.from_numpy(ref["tokens"])[None]  # (1, 500)
    with torch.no_grad():
        logits = loaded.model(idx)[0]  # (500, V)
        trace = loaded.model.inspect(idx)
    np.testing.assert_allclose(logits.numpy(), ref["logits"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(trace.logits[0].numpy(), ref["logits"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(trace.attentions[-1, 0].numpy(), ref["attn_last_layer"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(trace.hidden_states[:, 0].numpy(), ref["hidden_states"], atol=1e-4, rtol=0)
    loss = F.cross_entropy(logits[:-1], idx[0, 1:])
    assert loss.item() == pytest.approx(float(ref["lm_loss"]), abs=1e-5)
    greedy = loaded.model.generate(idx, 32, top_k=1)[0, 500:]  # top_k=1 sampling is argmax
    np.testing.assert_array_equal(greedy.numpy(), ref["greedy_next32"])


@pytest.mark.parametrize("name", sorted(AF))
def test_af_parity(name, released, reference_dir):
    ref = np.load(reference_dir / f"{name}.npz")
    loaded = released[AF[name]]
    assert loaded.task == "af" and loaded.model.config.out_features == 1
    with torch.no_grad():
        probs = torch.sigmoid(loaded.model(torch.from_numpy(ref["tokens"])[None]))[0, :, 0]
    np.testing.assert_allclose(probs.numpy(), ref["af_sigmoid_all_positions"], atol=1e-5, rtol=0)
    assert probs[-1].item() == pytest.approx(float(ref["af_prob"]), abs=1e-5)


def test_beat_parity_first_window(released, reference_dir):
    ref = np.load(reference_dir / "example_context_PPG_beat_detect_long_input.npz")
    loaded = released["PPGPT_beat_5k_iters"]
    assert loaded.task == "beats" and loaded.modality == "ppg"
    with torch.no_grad():
        probs = torch.sigmoid(loaded.model(torch.from_numpy(ref["window_tokens"][:1])))[0, :, 0]
    np.testing.assert_allclose(probs.numpy(), ref["window_outputs"][0], atol=1e-5, rtol=0)


def test_parameter_counts_and_shared_trunk(released):
    counts = {n: m.model.num_params() for n, m in released.items()}
    assert counts == {
        "ECGPT_560k_iters": 443_493, "PPGPT_500k_iters": 443_622, "ECGPT_AF_1k_iters": 436_993,
        "PPGPT_AF_1k_iters": 437_057, "PPGPT_beat_5k_iters": 437_057,
    }
    base, tuned = released["PPGPT_500k_iters"].model, released["PPGPT_AF_1k_iters"].model
    torch.testing.assert_close(base.blocks[6].attn.qkv.weight, tuned.blocks[6].attn.qkv.weight,
                               atol=0, rtol=0)
    assert not torch.equal(base.blocks[7].attn.qkv.weight, tuned.blocks[7].attn.qkv.weight)


def test_loads_extracted_pth(weights_dir, tmp_path):
    with zipfile.ZipFile(weights_dir / "PPGPT_beat_5k_iters.zip") as zf:
        zf.extract("PPGPT_beat_5k_iters.pth", tmp_path)
    from_pth = load_model(tmp_path / "PPGPT_beat_5k_iters.pth")
    from_zip = load_model(weights_dir / "PPGPT_beat_5k_iters.zip")
    for a, b in zip(from_pth.model.state_dict().values(), from_zip.model.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)


def test_safetensors_round_trip(released, tmp_path):
    src = released["ECGPT_560k_iters"]
    path = save_safetensors(src.model, tmp_path / "ecgpt.safetensors", modality="ecg")
    back = load_model(path)
    assert back.modality == "ecg" and back.task == "pretrain"
    assert back.model.config == src.model.config
    idx = torch.randint(0, 101, (2, 50))
    with torch.no_grad():
        torch.testing.assert_close(back.model(idx), src.model(idx), atol=0, rtol=0)
    assert not list(tmp_path.glob("*.tmp"))  # written atomically, nothing left behind


def test_vocab_mismatch_is_reported(released):
    with pytest.raises(CheckpointError, match=r"vocab size 101 \(ecg\) does not match"):
        check_vocab(released["ECGPT_560k_iters"], 102, "the PPG shards")
    check_vocab(released["PPGPT_500k_iters"], 102)


def test_export_to_released_layout_is_lossless(weights_dir, released):
    from heartgpt.model.released import _read_state_dict, to_released_state_dict

    original = _read_state_dict(weights_dir / "PPGPT_AF_1k_iters.zip")
    exported = to_released_state_dict(released["PPGPT_AF_1k_iters"].model)
    assert exported.keys() == original.keys()
    for key, tensor in original.items():
        assert torch.equal(exported[key], tensor), key


def test_a_model_of_the_synthetic_demo_says_so_when_loaded(tmp_path, caplog):
    import logging

    from heartgpt.model.checkpoint_format import warn_if_synthetic
    from heartgpt.model.safetensors_file import load_safetensors, save_safetensors
    from tiny import tiny_gpt

    log = logging.getLogger("test")
    for synthetic in (True, False):
        path = save_safetensors(tiny_gpt(101), tmp_path / f"{synthetic}.safetensors", "ecg",
                                synthetic=synthetic)
        loaded = load_safetensors(path)
        assert loaded.synthetic is synthetic
        caplog.clear()
        warn_if_synthetic(loaded, log)
        assert ("SYNTHETIC demo data" in caplog.text) is synthetic
