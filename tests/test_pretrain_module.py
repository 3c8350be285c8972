"""PretrainModule, the optimiser and schedule, resume helpers and the attention-map callback."""

from __future__ import annotations

import itertools
import math
import os
import time

import lightning as L
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from heartgpt.model import GPT, GPTConfig
from heartgpt.model.checkpoint_format import CheckpointError
from heartgpt.model.checkpoints import load_model
from heartgpt.model.released import load_released
from heartgpt.model.safetensors_file import save_safetensors
from heartgpt.training.base import step_seed
from heartgpt.training.callbacks import AttentionMapLogger
from heartgpt.training.optim import build_scheduler, param_groups, warmup_cosine
from heartgpt.training.overfit import FixedBatches
from heartgpt.training.pretrain import PretrainModule
from heartgpt.training.resume import resolve_ckpt_path, wandb_id_for

TINY = {"vocab_size": 101, "block_size": 32, "n_embd": 32, "n_head": 4, "n_layer": 2, "dropout": 0.0}
HPARAMS = {"lr": 3e-3, "betas": [0.9, 0.95], "weight_decay": 0.1, "warmup_steps": 2,
           "lr_decay_steps": 10, "min_lr_ratio": 0.1, "seed": 0}


def tiny_module(**overrides) -> PretrainModule:
    kw = {"model_config": TINY, "modality": "ecg", **HPARAMS, **overrides}
    return PretrainModule(**kw)


class RandomTokens(L.LightningDataModule):
    """Random (x, y) batches: a stand-in DataModule for module-level tests."""

    def __init__(self, vocab: int = 101, T: int = 32, n: int = 64, batch_size: int = 8) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        data = torch.randint(0, vocab - 1, (n, T + 1), generator=g)
        self.pairs = list(zip(data[:, :-1], data[:, 1:], strict=True))
        self.batch_size = batch_size

    def train_dataloader(self):
        return torch.utils.data.DataLoader(self.pairs, batch_size=self.batch_size)

    val_dataloader = test_dataloader = train_dataloader


def tiny_trainer(tmp_path, **kw) -> L.Trainer:
    return L.Trainer(default_root_dir=tmp_path, accelerator="cpu", devices=1, logger=False,
                     enable_progress_bar=False, enable_model_summary=False, **kw)


# ------------------------------------------------------------------------------------ optimiser


def test_weight_decay_only_on_linear_weights():
    model = GPT(GPTConfig(**TINY))
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert decayed == {n for n, m in model.named_modules() if isinstance(m, nn.Linear)
                       for n in [f"{n}.weight"]}
    assert not any("embedding" in n or "ln" in n or n.endswith("bias") for n in decayed)
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_warmup_cosine_schedule():
    f = [warmup_cosine(s, warmup_steps=10, decay_steps=110, min_lr_ratio=0.1) for s in range(130)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0) and f[10] == pytest.approx(1.0)
    assert f[60] == pytest.approx(0.1 + 0.9 * 0.5)  # half-way down the cosine
    assert all(a >= b for a, b in itertools.pairwise(f[10:]))
    assert f[110] == f[129] == pytest.approx(0.1)
    assert {warmup_cosine(s, 0, 100, 1.0) for s in range(200)} == {1.0}  # the paper: constant


def test_scheduler_follows_the_config_after_a_reload():
    model = nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1.0)
    sched = build_scheduler(opt, warmup_steps=0, decay_steps=10, min_lr_ratio=0.0)
    for _ in range(5):
        opt.step()
        sched.step()
    state = sched.state_dict()
    longer = build_scheduler(opt, warmup_steps=0, decay_steps=20, min_lr_ratio=0.0)
    longer.load_state_dict(state)  # step 5 of a schedule now 20 steps long
    assert longer.lr_lambdas[0](5) == pytest.approx(warmup_cosine(5, 0, 20, 0.0))
    with pytest.raises(ValueError):
        build_scheduler(opt, warmup_steps=5, decay_steps=2, min_lr_ratio=0.1)


# ------------------------------------------------------------------------------------ module


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_loss_and_metrics_of_a_step():
    module = tiny_module()
    x = torch.randint(0, 100, (4, 32))
    y = torch.randint(0, 100, (4, 32))
    loss = module._step((x, y), "val")
    logits = module.model(x)
    assert loss.item() == pytest.approx(F.cross_entropy(logits.flatten(0, 1), y.flatten()).item(), rel=1e-6)
    assert abs(loss.item() - math.log(101)) < 0.5  # untrained: about uniform
    m = module.val_metrics
    assert m["ppl"].compute().item() == pytest.approx(math.exp(loss.item()), rel=1e-4)
    acc = (logits.argmax(-1) == y).float().mean().item()
    assert m["acc"].compute().item() == pytest.approx(acc)


def test_hparams_are_plain_and_checked():
    from omegaconf import OmegaConf

    module = tiny_module(model_config=OmegaConf.create(TINY), betas=OmegaConf.create([0.9, 0.95]))
    assert type(module.hparams.model_config) is dict and type(module.hparams.betas) is list
    assert module.hparams.model_config == GPTConfig(**TINY).to_dict()
    assert module.hparams.task == "pretrain"
    with pytest.raises(ValueError, match="vocab_size 102"):
        tiny_module(modality="ppg")
    with pytest.raises(ValueError, match="unknown GPTConfig"):
        tiny_module(model_config={**TINY, "n_embed": 32})


def test_checkpoint_loads_without_hydra_and_weights_only(tmp_path):
    module = tiny_module()
    trainer = tiny_trainer(tmp_path, max_steps=3, limit_val_batches=1, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=RandomTokens())
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["model_config"] == GPTConfig(**TINY).to_dict()
    assert ckpt["hyper_parameters"]["modality"] == "ecg"
    assert all(k.startswith("model.") for k in ckpt["state_dict"])
    again = PretrainModule.load_from_checkpoint(path)
    for (k, a), b in zip(module.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    loaded = load_model(path)  # heartgpt.model.checkpoints reads our .ckpt files too
    assert loaded.modality == "ecg" and loaded.task == "pretrain"
    assert torch.equal(loaded.model.head.weight, module.model.head.weight)


def test_init_from_our_checkpoint_and_safetensors(tmp_path):
    source = tiny_module()
    with torch.no_grad():
        source.model.head.bias.fill_(0.5)
    save_safetensors(source.model, tmp_path / "w.safetensors", modality="ecg")
    target = tiny_module(init_from=str(tmp_path / "w.safetensors"))
    target.setup("fit")
    assert torch.equal(target.model.head.bias, source.model.head.bias)
    wider = tiny_module(init_from=str(tmp_path / "w.safetensors"),
                        model_config={**TINY, "n_embd": 64})
    with pytest.raises(CheckpointError, match="n_embd"):
        wider.setup("fit")


@pytest.mark.shared
def test_init_from_the_released_checkpoint(weights_dir):
    released = weights_dir / "PPGPT_500k_iters.zip"
    paper = GPTConfig(vocab_size=102).to_dict()
    module = tiny_module(model_config=paper, modality="ppg", init_from=str(released))
    module.setup("fit")
    reference = load_released(released).model.state_dict()
    for k, v in module.model.state_dict().items():
        assert torch.equal(v, reference[k]), k
    ecg = tiny_module(model_config=GPTConfig(vocab_size=101).to_dict(), init_from=str(released))
    with pytest.raises(CheckpointError, match="PPG|vocab size"):
        ecg.setup("fit")


def test_step_seed_is_a_function_of_position():
    assert step_seed(0, 0, 5, 5) == step_seed(0, 0, 5, 5)
    seeds = {step_seed(s, r, g, b) for s in (0, 1) for r in (0, 1) for g in (0, 1) for b in (0, 1)}
    assert len(seeds) == 16


def test_compile_keeps_state_dict_keys():
    module = tiny_module(compile=True)
    keys = list(module.state_dict())
    module.setup("fit")
    assert list(module.state_dict()) == keys


def test_fixed_batches_repeat(tmp_path):
    dm = FixedBatches(RandomTokens(), num_batches=2)
    dm.trainer = None
    dm.setup("fit")
    train = [x for x, _ in dm.train_dataloader()]
    val = [x for x, _ in dm.val_dataloader()]
    assert len(val) == 2 and len(train) == 2 * FixedBatches.TRAIN_REPEATS
    assert all(torch.equal(a, val[i % 2]) for i, a in enumerate(train))


# ------------------------------------------------------------------------------------ resume


def test_resolve_ckpt_path(tmp_path):
    assert resolve_ckpt_path(None, tmp_path / "run", tmp_path) is None
    assert resolve_ckpt_path("last", tmp_path / "run", tmp_path) is None  # nothing yet: fresh
    old = tmp_path / "runs" / "a" / "checkpoints" / "last.ckpt"
    new = tmp_path / "runs" / "b" / "checkpoints" / "last.ckpt"
    for p in (old, new):
        p.parent.mkdir(parents=True)
        torch.save({}, p)  # a whole file: an empty one is passed over
    os.utime(old, (time.time() + 10, time.time() + 10))  # old is now the newest
    assert resolve_ckpt_path("last", tmp_path / "run", tmp_path) == str(old)
    assert resolve_ckpt_path(str(new), tmp_path / "run", tmp_path) == str(new.resolve())
    with pytest.raises(FileNotFoundError):
        resolve_ckpt_path(str(tmp_path / "nope.ckpt"), tmp_path / "run", tmp_path)
    (tmp_path / "runs" / "a" / "wandb_run_id").write_text("abc123\n")
    assert wandb_id_for(old) == "abc123" and wandb_id_for(new) is None


# ------------------------------------------------------------------------------------ attention


def test_attention_logger_skips_without_wandb(tmp_path):
    cb = AttentionMapLogger(every_n_validations=1, num_samples=2)
    trainer = tiny_trainer(tmp_path, max_steps=2, val_check_interval=1, limit_val_batches=1,
                           num_sanity_val_steps=0, callbacks=[cb])
    trainer.fit(tiny_module(), datamodule=RandomTokens())
    assert cb.validations == 2 and cb._tokens.shape == (2, 32)
    assert cb.state_dict() == {"validations": 2}
