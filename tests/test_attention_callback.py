"""AttentionMapLogger: the chosen heartgpt.inference.interpretability figures of a few validation windows, logged
as images through a (mock) WandbLogger; skipped without W&B, under FSDP and off rank zero."""

from __future__ import annotations

from types import SimpleNamespace
from unittest.mock import MagicMock

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.strategies import FSDPStrategy
from omegaconf import OmegaConf

from heartgpt.data.demo import draw_subjects, synthesize
from heartgpt.data.tokenizer import tokenize_context
from heartgpt.training.callbacks import AttentionMapLogger
from heartgpt.training.pretrain import PretrainModule
from training_helpers import CONF_DIR

T = 300  # 3 s of ECG at 100 Hz: a few beats, so every figure can be drawn
TINY = {"vocab_size": 101, "block_size": T, "n_embd": 32, "n_head": 4, "n_layer": 3, "dropout": 0.0}


@pytest.fixture(scope="module")
def module() -> PretrainModule:
    torch.manual_seed(0)
    return PretrainModule(model_config=TINY, modality="ecg", lr=1e-3, betas=[0.9, 0.95],
                          weight_decay=0.1, warmup_steps=1, lr_decay_steps=10, min_lr_ratio=0.1,
                          seed=0)


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) of three synthetic sinus-rhythm ECG windows, as a validation batch."""
    subjects = [s for s in draw_subjects("ecg", 8, seed=0) if not s.af][:3]
    recordings = [synthesize(s, "ecg", seconds=5) for s in subjects]
    x = torch.stack([torch.as_tensor(tokenize_context(r.signal, r.sample_rate, "ecg", T + 1))
                     for r in recordings])
    return x[:, :-1], x[:, 1:]  # (3, T) each


def fake_trainer(*loggers, step: int = 7, strategy=None, rank_zero: bool = True):
    return SimpleNamespace(loggers=list(loggers), sanity_checking=False, global_step=step,
                           strategy=strategy or object(), is_global_zero=rank_zero)


def validate(cb: AttentionMapLogger, trainer, module: PretrainModule, batch, runs: int = 1) -> None:
    """``runs`` validation runs as Lightning calls the hooks (first batch of each)."""
    cb.setup(trainer, module, "fit")
    for _ in range(runs):
        cb.on_validation_batch_start(trainer, module, batch, 0)
        cb.on_validation_epoch_end(trainer, module)


def logged(wandb: MagicMock) -> dict[str, dict]:
    return {c.kwargs["key"]: c.kwargs for c in wandb.log_image.call_args_list}


def test_logs_the_chosen_figures(module, batch):
    wandb = MagicMock(spec=WandbLogger)  # passes isinstance(..., WandbLogger)
    cb = AttentionMapLogger(every_n_validations=2, num_samples=2,
                            figures=["heads", "aggregate", "folded", "homonyms"], layers=[0, -1])
    trainer = fake_trainer(wandb)
    validate(cb, trainer, module, batch, runs=1)
    wandb.log_image.assert_not_called()  # every 2nd validation only
    validate(cb, trainer, module, batch, runs=1)
    calls = logged(wandb)
    assert sorted(calls) == ["val/attention_aggregate", "val/attention_folded",
                             "val/attention_layer0", "val/attention_layer2", "val/homonyms"]
    for kw in calls.values():
        assert kw["step"] == 7 and kw["caption"] == ["window 0", "window 1"]
        assert len(kw["images"]) == 2
        for img in kw["images"]:
            assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
            assert img.shape[0] > 200 and img.std() > 0  # a rendered figure, not a blank
    assert cb.state_dict() == {"validations": 2}
    assert cb.layers == [0, 2] and cb.sample_rate == 100.0


def test_a_subset_and_a_prefix(module, batch):
    wandb = MagicMock(spec=WandbLogger)
    cb = AttentionMapLogger(every_n_validations=1, num_samples=1, figures=["aggregate"],
                            prefix="train_monitor")
    validate(cb, fake_trainer(wandb), module, batch)
    assert list(logged(wandb)) == ["train_monitor/attention_aggregate"]
    assert cb._tokens.shape == (1, T)


def test_a_figure_a_window_cannot_give_is_skipped(module):
    ramp = torch.arange(T).remainder(101)[None]  # only rising edges: no homonym pairs
    wandb = MagicMock(spec=WandbLogger)
    cb = AttentionMapLogger(every_n_validations=1, num_samples=1, figures=["homonyms", "aggregate"])
    with pytest.warns(UserWarning, match="no homonyms figure of window 0"):
        validate(cb, fake_trainer(wandb), module, {"tokens": ramp})  # a fine-tuning batch
    assert list(logged(wandb)) == ["val/attention_aggregate"]


@pytest.mark.parametrize("case", ["no_wandb", "fsdp", "not_rank_zero"])
def test_skipped(case, module, batch):
    wandb = MagicMock(spec=WandbLogger)
    trainer = {"no_wandb": fake_trainer(),
               "fsdp": fake_trainer(wandb, strategy=MagicMock(spec=FSDPStrategy)),
               "not_rank_zero": fake_trainer(wandb, rank_zero=False)}[case]
    cb = AttentionMapLogger(every_n_validations=1, num_samples=1)
    if case == "fsdp":
        with pytest.warns(UserWarning, match="skipped under FSDP"):
            validate(cb, trainer, module, batch)
    else:
        validate(cb, trainer, module, batch)
    wandb.log_image.assert_not_called()
    assert cb.validations == 1  # counted all the same, so ranks stay in step


def test_state_dict_round_trip():
    cb = AttentionMapLogger(every_n_validations=3, num_samples=1)
    cb.load_state_dict({"validations": 5})
    assert cb.state_dict() == {"validations": 5}


def test_bad_settings(module):
    with pytest.raises(ValueError, match="figures"):
        AttentionMapLogger(every_n_validations=1, num_samples=1, figures=["heads", "shift"])
    with pytest.raises(ValueError, match=">= 1"):
        AttentionMapLogger(every_n_validations=0, num_samples=1)
    cb = AttentionMapLogger(every_n_validations=1, num_samples=1, layers=[3])
    with pytest.raises(ValueError, match="layers must be in -3..2"):
        cb.setup(fake_trainer(), module, "fit")


def test_config_entry_instantiates():
    node = OmegaConf.load(CONF_DIR / "callbacks" / "default.yaml").attention_maps
    cb = instantiate(node, _convert_="all")
    assert isinstance(cb, AttentionMapLogger)
    assert set(cb.figures) == {"heads", "aggregate", "folded", "homonyms"} and cb.layers == [0, -1]
