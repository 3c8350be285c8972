"""Deployment exports (``heartgpt.model.export``, ``python -m heartgpt.export``): the five
released models run by ONNX Runtime give PyTorch's probabilities on tokenised example windows;
an ``.onnx`` round-trips its metadata and serves ``load_model`` and AF screening; a ``.pt2``
equals PyTorch; the command writes and checks a file, and a bad checkpoint is one error line."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import heartgpt
from heartgpt.data.readers import read_signal
from heartgpt.data.tokenizer import tokenize_window
from heartgpt.files import sha256_file
from heartgpt.inference.af_screening import screen_af
from heartgpt.inference.loading import eval_mode, load_tool_model, model_device
from heartgpt.model.checkpoint_format import CheckpointError, LoadedModel
from heartgpt.model.checkpoints import init_from_pretrained, load_model
from heartgpt.model.export import ExportCheck, export_onnx, export_program, load_program
from heartgpt.model.onnx_file import OnnxGPT, load_onnx
from heartgpt.model.safetensors_file import save_safetensors
from tiny import tiny_gpt

RELEASED = {  # file -> (modality, task, head outputs)
    "ECGPT_560k_iters.zip": ("ecg", "pretrain", 101),
    "PPGPT_500k_iters.zip": ("ppg", "pretrain", 102),
    "ECGPT_AF_1k_iters.zip": ("ecg", "af", 1),
    "PPGPT_AF_1k_iters.zip": ("ppg", "af", 1),
    "PPGPT_beat_5k_iters.zip": ("ppg", "beats", 1),
}
WINDOW = 500  # samples = tokens: the released block_size
PROB_ATOL = 1e-5


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """What a user reads: sigmoid of a 1-output head, softmax of a language model's."""
    return torch.sigmoid(logits) if logits.size(-1) == 1 else torch.softmax(logits, dim=-1)


def differences(got: torch.Tensor, want: torch.Tensor) -> tuple[float, float, float]:
    """(max |prob diff|, max |logit diff|, the logit tolerance 1e-5 * max|logit| + 1e-5)."""
    assert got.shape == want.shape and got.dtype == torch.float32
    prob = (probabilities(got) - probabilities(want)).abs().max().item()
    logit = (got - want).abs().max().item()
    return prob, logit, 1e-5 * want.abs().max().item() + 1e-5


def tokenised_windows(signal: np.ndarray, length: int, stride: int, count: int | None = None
                      ) -> np.ndarray:
    """(W, length) tokens of the windows starting every ``stride`` samples (the first ``count``)."""
    starts = range(0, len(signal) - length + 1, stride)
    windows = [tokenize_window(signal[s : s + length]) for s in starts]
    return np.stack(windows[:count])


# ----------------------------------------------------------------------------- released models


@pytest.mark.slow
@pytest.mark.shared
def test_released_models_in_onnx_runtime_match_pytorch(weights_dir, example_inputs_dir,
                                                       tmp_path):
    """Each released model, exported and run by ONNX Runtime on windows of the example inputs
    of its modality: all full windows in one batch, batch 1, and five shorter windows of one file
    (batch and length dynamic): probabilities equal PyTorch's to 1e-5, logits to 1e-5 relative."""
    report = []
    for name, (modality, task, n_out) in RELEASED.items():
        loaded = load_model(weights_dir / name)
        files = sorted(example_inputs_dir.glob(f"example_context_{modality.upper()}*.csv"))
        signals = [read_signal(f) for f in files]
        batches = {
            "all": np.concatenate([tokenised_windows(s, WINDOW, WINDOW) for s in signals]),
            "one": tokenised_windows(signals[0], WINDOW, WINDOW, count=1),
            "5x400": tokenised_windows(signals[0], 400, 25, count=5),
        }
        assert batches["all"].shape[0] >= 3 and batches["5x400"].shape == (5, 400)
        start = time.perf_counter()
        path = export_onnx(loaded, tmp_path / f"{Path(name).stem}.onnx")
        seconds = time.perf_counter() - start
        exported = load_onnx(path, threads=1)
        assert (exported.modality, exported.task) == (modality, task)
        assert exported.model.config == loaded.model.config
        worst = [0.0, 0.0]
        for what, tokens in batches.items():
            x = torch.from_numpy(tokens)
            with torch.no_grad():
                want = loaded.model(x)
            got = exported.model(x)
            assert got.shape == (*tokens.shape, n_out), what
            prob, logit, logit_tol = differences(got, want)
            assert prob <= PROB_ATOL, (name, what, prob)
            assert logit <= logit_tol, (name, what, logit, logit_tol)
            worst = [max(worst[0], prob), max(worst[1], logit)]
        report.append(f"{name}: export {seconds:.1f} s, {path.stat().st_size / 1e6:.1f} MB, "
                      f"max |diff| probabilities {worst[0]:.1e}, logits {worst[1]:.1e}")
    print("\n" + "\n".join(report))


# ----------------------------------------------------------------------------- tiny models


@pytest.fixture(scope="module")
def tiny_af(tmp_path_factory) -> tuple[LoadedModel, Path]:
    """A tiny 1-output ECG model saved as safetensors, loaded, and exported to ONNX."""
    folder = tmp_path_factory.mktemp("tiny")
    source = save_safetensors(tiny_gpt(vocab_size=101, out_features=1),
                              folder / "tiny_af.safetensors", "ecg", "af")
    loaded = load_model(source)
    return loaded, export_onnx(loaded, folder / "tiny_af.onnx")


def test_onnx_round_trips_metadata_and_runs_dynamic_shapes(tiny_af):
    import onnx

    loaded, path = tiny_af
    stored = {p.key: p.value for p in onnx.load(path).metadata_props}
    assert json.loads(stored["heartgpt.config"]) == loaded.model.config.to_dict()
    assert stored["heartgpt.modality"] == "ecg" and stored["heartgpt.task"] == "af"
    assert stored["heartgpt.source"] == "tiny_af.safetensors"
    assert stored["heartgpt.source_sha256"] == sha256_file(loaded.source)
    assert stored["heartgpt.version"] == heartgpt.__version__
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []  # no temp

    for again in (load_onnx(path, threads=1), load_model(path)):
        assert isinstance(again.model, OnnxGPT)
        assert (again.modality, again.task, again.source) == ("ecg", "af", str(path))
        assert again.model.config == loaded.model.config
    model = again.model
    block = model.config.block_size
    for batch, length in [(1, block), (4, block), (2, 17), (3, 1)]:
        x = torch.randint(0, 101, (batch, length), generator=torch.Generator().manual_seed(length))
        with torch.no_grad():
            want = loaded.model(x)
        got = model(x)
        assert got.shape == (batch, length, 1) and got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="exceeds block_size"):
        model(torch.zeros(1, block + 1, dtype=torch.long))
    with pytest.raises(CheckpointError, match="forward pass only"):
        model.inspect(torch.zeros(1, 8, dtype=torch.long))


def test_onnx_model_serves_the_af_screen_like_the_torch_model(tiny_af):
    loaded, path = tiny_af
    onnx_loaded, mod = load_tool_model(path, "binary", "ecg", refuse_task="beats")
    model = onnx_loaded.model
    assert list(model.parameters()) == [] and model_device(model) == torch.device("cpu")
    assert model.to("cpu") is model and model_device(model) == torch.device("cpu")
    with eval_mode(model):
        assert not model.training
    t = np.arange(1500) / 100.0
    signal = np.sin(2 * np.pi * 1.2 * t) + 0.3 * np.sin(2 * np.pi * 7.0 * t) + 0.1 * t
    want = screen_af(loaded.model, signal, 100.0, "ecg", stride=10, batch_size=32)
    got = screen_af(model, signal, 100.0, mod, stride=10, batch_size=32)
    assert len(got.probs) == len(want.probs) > 32  # several batches, the last one shorter
    np.testing.assert_allclose(got.probs, want.probs, rtol=0, atol=1e-5)
    assert got.recording_prob == pytest.approx(want.recording_prob, abs=1e-5)


def test_an_onnx_file_that_is_not_ours_is_refused_naming_it(tiny_af, tmp_path, monkeypatch):
    import onnx
    from onnx import TensorProto, helper

    loaded, path = tiny_af
    graph = helper.make_graph(
        [helper.make_node("Identity", ["tokens"], ["logits"])], "other",
        [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["b", "t"])],
        [helper.make_tensor_value_info("logits", TensorProto.INT64, ["b", "t"])])
    foreign = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph), foreign)
    with pytest.raises(CheckpointError, match="no heartgpt metadata") as info:
        load_model(foreign)
    assert str(info.value).startswith(str(foreign))

    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not a protobuf at all")
    with pytest.raises(CheckpointError, match="cannot read as an ONNX model") as info:
        load_model(corrupt)
    assert str(info.value).startswith(str(corrupt))

    with pytest.raises(CheckpointError, match="ONNX export: initialising a model needs"):
        init_from_pretrained(tiny_gpt(vocab_size=101, out_features=1), path)

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    with pytest.raises(CheckpointError, match=r"pip install 'heartgpt\[onnx\]'") as info:
        load_model(path)
    assert str(info.value).startswith(str(path))


def test_torch_export_program_equals_pytorch(tmp_path):
    model = tiny_gpt(vocab_size=102)  # a language model: softmax over the vocabulary
    source = save_safetensors(model, tmp_path / "tiny_lm.safetensors", "ppg")
    loaded = load_model(source)
    path = export_program(loaded, tmp_path / "tiny_lm.pt2")
    program, metadata = load_program(path)
    assert metadata["modality"] == "ppg" and metadata["task"] == "pretrain"
    assert json.loads(metadata["config"]) == model.config.to_dict()
    assert metadata["source_sha256"] == sha256_file(source)
    run = program.module()
    for batch, length in [(1, 64), (5, 64), (2, 9)]:
        x = torch.randint(0, 102, (batch, length), generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            want = loaded.model(x)
            got = run(x)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- the command


@pytest.fixture
def run_export(monkeypatch, tmp_path, capsys):
    """``python -m heartgpt.export <args>`` in this process, in ``tmp_path``: (exit code,
    stdout, stderr); the logging Hydra configures is put back afterwards."""
    from hydra.core.global_hydra import GlobalHydra

    import heartgpt.export as command

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    monkeypatch.chdir(tmp_path)

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["heartgpt.export", *args])
        code = 0
        try:
            command.main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
            if not isinstance(e.code, int):
                print(e.code, file=sys.stderr)
        out, err = capsys.readouterr()
        return code, out, err

    yield run
    root.handlers[:], root.level = handlers, level
    GlobalHydra.instance().clear()


def test_command_writes_and_checks_the_export(run_export, tmp_path, monkeypatch):
    source = save_safetensors(tiny_gpt(vocab_size=101, out_features=1),
                              tmp_path / "tiny_af.safetensors", "ecg", "af")
    code, out, err = run_export(f"checkpoint={source}")
    written = tmp_path / "outputs" / "export" / "tiny_af.onnx"
    assert code == 0, err
    assert written.is_file() and load_model(written).task == "af"
    (line,) = out.strip().splitlines()  # one line, no exporter chatter
    assert line.startswith(f"{written}: ONNX model of tiny_af.safetensors (")
    assert "tokens 1x64, 3x64, 2x21: probabilities" in line and "logits" in line

    code, out, err = run_export(f"checkpoint={source}", "format=torch_export", "out=m/x.pt2")
    assert code == 0, err
    assert (tmp_path / "m" / "x.pt2").is_file()
    assert "torch.export program of tiny_af.safetensors" in out
    assert "probabilities 0.0e+00" in out

    # an export that does not match PyTorch is removed, and says so naming the file
    failing = ExportCheck(tmp_path / "bad.onnx", [(1, 64)], 2e-5, 0.0, 1e-5)
    monkeypatch.setattr("heartgpt.export.check_export", lambda loaded, path: failing)
    code, out, err = run_export(f"checkpoint={source}", "out=bad.onnx")
    assert code == 1 and not (tmp_path / "bad.onnx").exists()
    assert err.strip().splitlines() == [
        "error: bad.onnx: outputs differ from PyTorch's: probabilities by 2.00e-05 (> 1e-05); "
        "the file was removed"]


def test_command_errors_are_one_line_naming_the_file(run_export, tmp_path):
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00" * 64)
    code, out, err = run_export(f"checkpoint={corrupt}")
    assert code == 1 and "Traceback" not in err
    (line,) = err.strip().splitlines()
    assert line.startswith(f"error: {corrupt.resolve()}: cannot read as safetensors")
    assert not (tmp_path / "outputs").exists()

    code, out, err = run_export()
    assert code == 1 and err.strip().startswith("error: checkpoint: not given: checkpoint=<file>")
    code, out, err = run_export(f"checkpoint={corrupt}", "format=tflite")
    assert code == 1
    assert err.strip() == "error: format=tflite: unknown export format; use onnx, torch_export, safetensors or hub"
