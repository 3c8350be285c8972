"""LoRA adapters (issue 19, part): exact at init, merged equals adapted, only the adapters and
the freeze strategy's choice train, a LoRA run's checkpoint loads (and exports) merged."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from heartgpt.model import GPT, GPTConfig
from heartgpt.model.checkpoints import load_lightning
from heartgpt.model.lora import (
    LoRALinear,
    add_lora,
    lora_layers,
    lora_parameters,
    merge_lora,
    merge_lora_weights,
)
from heartgpt.model.safetensors_file import load_safetensors, save_safetensors
from heartgpt.training.callbacks.freeze import Freeze, count_trainable
from heartgpt.training.finetune import FinetuneModule
from heartgpt.training.optim import param_groups

LORA = dict(rank=4, alpha=8.0, dropout=0.0, targets=["qkv", "proj"])
CONFIG = dict(vocab_size=101, block_size=16, n_embd=16, n_head=2, n_layer=3, dropout=0.0,
              out_features=1)


def _gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(**CONFIG)).eval()


def _tokens(n: int = 4) -> torch.Tensor:
    return torch.randint(0, 101, (n, 16), generator=torch.Generator().manual_seed(1))


def test_an_adapted_model_starts_as_the_plain_one_and_keeps_its_weight_names():
    plain, adapted = _gpt(), add_lora(_gpt(), **LORA)
    x = _tokens()
    assert torch.equal(adapted(x), plain(x))  # B = 0: not one bit different
    keys = set(adapted.state_dict())
    assert set(plain.state_dict()) <= keys  # blocks.0.attn.qkv.weight ... unchanged
    assert keys - set(plain.state_dict()) == {f"blocks.{i}.attn.{m}.lora_{ab}" for i in range(3)
                                              for m in ("qkv", "proj") for ab in "ab"}
    missing, unexpected = adapted.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(".lora_" in k for k in missing)
    assert isinstance(adapted.blocks[0].mlp.fc, torch.nn.Linear)
    assert not isinstance(adapted.blocks[0].mlp.fc, LoRALinear)  # only the targets
    with_mlp = add_lora(_gpt(), **{**LORA, "targets": ["mlp"]})
    assert isinstance(with_mlp.blocks[2].mlp.proj, LoRALinear)
    with pytest.raises(ValueError, match="LoRA targets must be some of"):
        add_lora(_gpt(), **{**LORA, "targets": ["attention"]})


def test_merged_equals_adapted_and_has_the_plain_layout():
    adapted = add_lora(_gpt(), **LORA)
    with torch.no_grad():
        for p in lora_parameters(adapted):
            p.normal_(0, 0.3)  # as after training
    x = _tokens()
    expected = adapted(x)
    assert not torch.allclose(expected, _gpt()(x), atol=1e-3)  # the adapters do something
    weights = merge_lora_weights(adapted.state_dict(), **LORA)
    merged = merge_lora(adapted)
    assert set(merged.state_dict()) == set(_gpt().state_dict())
    torch.testing.assert_close(merged(x), expected, atol=1e-5, rtol=0)
    fresh = _gpt()
    fresh.load_state_dict(weights, strict=True)  # the state-dict route gives the same model
    torch.testing.assert_close(fresh(x), expected, atol=1e-5, rtol=0)


class _Classifier(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.model = add_lora(_gpt().train(), **LORA)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.binary_cross_entropy_with_logits(self.model(x)[:, -1, 0], y)

    def configure_optimizers(self):
        return torch.optim.AdamW(param_groups(self.model, 0.1), lr=1e-2)


@pytest.mark.parametrize("strategy", ["head", "last_block"])
def test_only_the_adapters_and_the_strategys_layers_change(strategy):
    module = _Classifier()
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    x = _tokens(32)
    trainer = pl.Trainer(max_epochs=1, callbacks=[Freeze(strategy)], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")
    trainer.fit(module, DataLoader(TensorDataset(x, (x[:, -1] > 50).float()), batch_size=8))
    after = module.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    allowed = ("head.",) if strategy == "head" else ("head.", "ln_f.", "blocks.2.")
    assert all(".lora_" in k or k.startswith(allowed) for k in changed), sorted(changed)
    assert {k for k in changed if ".lora_b" in k} == {k for k in before if ".lora_b" in k}
    assert "head.weight" in changed
    if strategy == "head":  # head + adapters: fewer than the paper's last_block
        last_block = _Classifier()
        Freeze("last_block").freeze_before_training(last_block)
        assert count_trainable(module) < count_trainable(last_block)


def test_a_lora_finetune_checkpoint_loads_merged(tmp_path):
    module = FinetuneModule(model_config=CONFIG, modality="ecg", task="af",
                            head={"kind": "classify", "outputs": 1, "pooling": "last"},
                            pretrained=None, lr=1e-3, betas=[0.9, 0.95], weight_decay=0.1,
                            warmup_steps=0, lr_decay_steps=10, min_lr_ratio=0.1, beats=None,
                            seed=0, lora=LORA)
    with torch.no_grad():
        for p in lora_parameters(module.model):
            p.normal_(0, 0.3)
    module.eval()
    x = _tokens()
    expected = module.model(x)
    path = tmp_path / "lora.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    loaded = load_lightning(path)
    assert not any(isinstance(m, LoRALinear) for m in loaded.model.modules())
    torch.testing.assert_close(loaded.model(x), expected, atol=1e-5, rtol=0)
    export = tmp_path / "merged.safetensors"  # what `python -m heartgpt.export` writes
    save_safetensors(loaded.model, export, modality="ecg", task="af")
    torch.testing.assert_close(load_safetensors(export).model(x), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("freeze", ["head", "last_block"])
@pytest.mark.parametrize("finetune", ["none", "lora"])
def test_freeze_and_finetune_compose_as_one_sweep(freeze, finetune):
    """Each job of ``-m task=af freeze=head,last_block finetune=none,lora``."""
    from hydra.utils import instantiate

    from training_helpers import compose_train

    cfg = compose_train(["task=af", f"freeze={freeze}", f"finetune={finetune}",
                         "model.n_layer=2", "model.n_embd=16", "model.n_head=2"])
    module = instantiate(cfg.module, _convert_="all")
    assert len(lora_layers(module.model)) == (4 if finetune == "lora" else 0)  # 2 x qkv, proj
    assert cfg.freeze.strategy == freeze


def test_lora_on_pretraining_is_a_config_error(tmp_path):
    from training_helpers import run_module

    out = run_module(["task=pretrain", "finetune=lora", "logger=none",
                      f"paths.log_dir={tmp_path}/runs", f"paths.data_dir={tmp_path}/data"],
                     cwd=tmp_path, timeout=300)
    assert out.returncode == 1
    assert "error: finetune: lora adapts a fine-tuning task" in out.stderr


# ------------------------------------------------------------------ a LoRA run's checkpoints
# Issue 19, second part: a LoRA run's .ckpt holds the adapters and the trained head (kilobytes)
# plus a reference to its base file; every loader reads the base back, verified by sha256.


class _RestoredState(pl.Callback):
    """The network's weights as a resumed fit starts (after the checkpoint is restored)."""

    state: dict[str, torch.Tensor] | None = None

    def on_train_start(self, trainer, pl_module):
        self.state = {k: v.detach().clone() for k, v in pl_module.model.state_dict().items()}


def _windows() -> DataLoader:
    """32 token windows of the tiny model's context, a label each, as the shard loaders give."""
    tokens = torch.randint(0, 101, (32, 64), generator=torch.Generator().manual_seed(2))
    rows = [{"tokens": tokens[i], "label": (tokens[i, -1] > 50).float(), "row": i,
             "subject": f"s{i % 4}"} for i in range(len(tokens))]
    return DataLoader(rows, batch_size=8)


def _lora_fit(root, base, max_steps: int, ckpt_path=None, callbacks=()):
    """``task=af finetune=lora freeze=head`` of the tiny model from ``base`` (a FinetuneModule
    and Freeze callback as ``heartgpt.train`` instantiates them), fitted to ``max_steps`` with
    the run's checkpoint plugin, ``last.ckpt`` under ``root``."""
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import ModelCheckpoint

    from heartgpt.training.checkpoint_io import SafeCheckpointIO
    from training_helpers import TINY_MODEL, compose_train

    cfg = compose_train([*TINY_MODEL, "task=af", "modality=ecg", "finetune=lora", "freeze=head",
                         f"module.pretrained={base}"])
    module = instantiate(cfg.module, _convert_="all")
    trainer = pl.Trainer(
        max_steps=max_steps, accelerator="cpu", logger=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, plugins=[SafeCheckpointIO()],
        callbacks=[instantiate(cfg.freeze, _convert_="all"), *callbacks,
                   ModelCheckpoint(dirpath=root, save_last=True, save_top_k=0)])
    trainer.fit(module, _windows(), ckpt_path=ckpt_path)
    return module.eval()


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """A 4-step LoRA fine-tune of the tiny model from a tiny pre-trained safetensors base."""
    from tiny import tiny_gpt

    root = tmp_path_factory.mktemp("lora_run")
    base = save_safetensors(tiny_gpt(vocab_size=101), root / "base.safetensors", "ecg")
    module = _lora_fit(root, base, max_steps=4)
    return root / "last.ckpt", base, module


def test_a_lora_runs_checkpoint_holds_the_adapters_and_a_verified_base_reference(lora_run):
    from heartgpt.files import sha256_file

    ckpt_file, base, module = lora_run
    assert ckpt_file.stat().st_size < 100_000  # optimizer state included
    ckpt = torch.load(ckpt_file, weights_only=True)
    stored = set(ckpt["state_dict"])
    trainable = {f"model.{k}" for k, p in module.model.named_parameters() if p.requires_grad}
    assert {k for k in stored if k.startswith("model.")} == trainable
    # the adapters and the head: what freeze=head finetune=lora trains
    assert trainable == {k for k in module.state_dict() if ".lora_" in k or ".head." in k}
    assert stored - trainable == {k for k in module.state_dict() if not k.startswith("model.")}
    reference = ckpt["base_weights"]
    assert reference == {"path": str(base.resolve()), "sha256": sha256_file(base),
                         "keys": len(module.state_dict()) - len(stored)}
    assert reference["path"] == ckpt["hyper_parameters"]["initial_weights"]["path"]

    # training moved the adapters and the head, nothing else
    before = load_safetensors(base).model.state_dict()
    after = module.model.state_dict()
    changed = {k for k in after if k not in before or not torch.equal(after[k], before[k])}
    assert changed == {k.removeprefix("model.") for k in trainable}
    assert all(not torch.equal(after[k], torch.zeros_like(after[k])) for k in after
               if k.endswith(".lora_b"))


def test_a_lora_runs_merged_export_gives_the_adapted_models_outputs(lora_run, tmp_path):
    from heartgpt.export import export
    from heartgpt.training.finetune import FinetuneModule
    from training_helpers import compose_train

    ckpt_file, _, module = lora_run
    x = torch.randint(0, 101, (4, 64), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = module.model(x)  # the adapted model, as trained
        torch.testing.assert_close(load_lightning(ckpt_file).model(x), expected, atol=1e-5,
                                   rtol=0)
        loaded = FinetuneModule.load_from_checkpoint(ckpt_file).eval()  # strict, base filled in
        assert len(lora_layers(loaded.model)) == 4
        torch.testing.assert_close(loaded.model(x), expected, atol=0, rtol=0)

    out = tmp_path / "merged.safetensors"
    export(compose_train([f"checkpoint={ckpt_file}", "format=safetensors", f"out={out}"],
                         config_name="export"))
    merged = load_safetensors(out)
    assert merged.task == "af" and merged.modality == "ecg"
    assert set(merged.model.state_dict()) == set(GPT(merged.model.config).state_dict())
    assert not any(".lora_" in k for k in merged.model.state_dict())
    assert not lora_layers(merged.model)  # a plain GPT
    with torch.no_grad():
        torch.testing.assert_close(merged.model(x), expected, atol=1e-5, rtol=0)


def test_a_lora_checkpoint_refuses_a_moved_or_changed_base(lora_run, tmp_path):
    import shutil

    from heartgpt.model.checkpoint_format import CheckpointError
    from heartgpt.training.finetune import FinetuneModule
    from tiny import tiny_gpt

    ckpt_file, base, _ = lora_run
    own_base = shutil.copy(base, tmp_path / "base.safetensors")  # the shared run stays intact
    ckpt = torch.load(ckpt_file, weights_only=True)
    ckpt["base_weights"]["path"] = str(own_base)
    mine = tmp_path / "lora.ckpt"
    torch.save(ckpt, mine)
    load_lightning(mine)  # the copy is byte for byte the base: loads

    own_base.rename(tmp_path / "moved.safetensors")
    for load in (load_lightning, FinetuneModule.load_from_checkpoint):
        with pytest.raises(CheckpointError) as missing:
            load(mine)
        assert str(missing.value).startswith(f"{mine}: its base weights {own_base} are missing")

    # other weights at that path: refused, naming both files and both sha256
    save_safetensors(tiny_gpt(vocab_size=101, n_layer=2, dropout=0.1), own_base, "ecg")
    for load in (load_lightning, FinetuneModule.load_from_checkpoint):
        with pytest.raises(CheckpointError) as changed:
            load(mine)
        text = str(changed.value)
        assert text.startswith(f"{mine}: its base weights {own_base} have changed: sha256 ")
        assert ckpt["base_weights"]["sha256"] in text


def test_a_lora_run_resumes_from_its_adapter_checkpoint(lora_run, tmp_path):
    ckpt_file, base, module = lora_run
    restored = _RestoredState()
    resumed = _lora_fit(tmp_path, base, max_steps=6, ckpt_path=ckpt_file, callbacks=[restored])
    want = module.model.state_dict()
    assert restored.state.keys() == want.keys()
    assert all(torch.equal(restored.state[k], want[k]) for k in want)  # base + adapters + head
    assert resumed.trainer.global_step == 6
    after = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert after["base_weights"] == torch.load(ckpt_file, weights_only=True)["base_weights"]


def test_only_a_lora_run_from_a_base_file_leaves_tensors_out(lora_run):
    """From scratch (no base) or without adapters: the full state dict, no reference; a frozen
    tensor that is not the base's stays in the checkpoint."""
    _, _, module = lora_run
    full = module.state_dict()
    trained = sum(p.requires_grad for p in module.model.parameters())  # 8 adapters, the head
    assert trained == 10

    def saved(hparams_update: dict) -> dict:
        before = dict(module.hparams)
        module.hparams.update(hparams_update)
        try:
            checkpoint = {"state_dict": dict(full)}
            module.on_save_checkpoint(checkpoint)
            return checkpoint
        finally:
            module.hparams.clear()
            module.hparams.update(before)

    assert saved({})["base_weights"]["keys"] == len(full) - trained - len(
        [k for k in full if not k.startswith("model.")])
    for scratch in ({"initial_weights": None, "pretrained": None}, {"lora": None}):
        checkpoint = saved(scratch)
        assert "base_weights" not in checkpoint and checkpoint["state_dict"].keys() == full.keys()

    frozen = module.model.blocks[0].ln1.weight
    assert not frozen.requires_grad
    kept = frozen.detach().clone()
    with torch.no_grad():
        frozen.add_(1.0)  # no longer the base's
    try:
        checkpoint = saved({})
    finally:
        with torch.no_grad():
            frozen.copy_(kept)
    assert "model.blocks.0.ln1.weight" in checkpoint["state_dict"]
    assert checkpoint["base_weights"]["keys"] == saved({})["base_weights"]["keys"] - 1
