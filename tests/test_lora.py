"""LoRA adapters (issue 19, part): exact at init, merged equals adapted, only the adapters and
the freeze strategy's choice train, a LoRA run's checkpoint loads (and exports) merged."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from heartgpt.model import GPT, GPTConfig
from heartgpt.model.checkpoints import load_lightning, load_safetensors, save_safetensors
from heartgpt.model.lora import (
    LoRALinear,
    add_lora,
    lora_layers,
    lora_parameters,
    merge_lora,
    merge_lora_weights,
)
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
    module = FinetuneModule(model_config=CONFIG, modality="ecg", task="af", head="sequence",
                            pooling="last", pretrained=None, lr=1e-3, betas=[0.9, 0.95],
                            weight_decay=0.1, warmup_steps=0, lr_decay_steps=10, min_lr_ratio=0.1,
                            pos_weight=None, beat_tolerance_ms=150, peak_height=0.5,
                            peak_distance_ms=280, peak_max_width_ms=None, seed=0, lora=LORA)
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
