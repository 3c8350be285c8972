"""Freeze callbacks: exactly the intended parameters train; frozen ones stay bit-identical."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from heartgpt.model import GPT, GPTConfig
from heartgpt.training.callbacks.freeze import Freeze, GradualUnfreeze, count_trainable
from heartgpt.training.optim import param_groups

N_LAYER = 3


class TinyClassifier(pl.LightningModule):
    """Stands in for the fine-tuning module: GPT with a 1-unit head on the last position."""

    def __init__(self, lr: float = 1e-2) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.model = GPT(GPTConfig(vocab_size=101, block_size=16, n_embd=16, n_head=2,
                                   n_layer=N_LAYER, dropout=0.0, out_features=1))
        self.lr = lr
        self.seen_trainable: dict[int, set[str]] = {}

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self.model(x)[:, -1, 0]
        return F.binary_cross_entropy_with_logits(logits, y)

    def on_train_epoch_start(self) -> None:
        self.seen_trainable[self.current_epoch] = {
            n for n, p in self.model.named_parameters() if p.requires_grad
        }

    def configure_optimizers(self):
        optim = torch.optim.AdamW(param_groups(self.model, 0.1), lr=self.lr)
        sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda step: 1.0 / (1 + step))
        return {"optimizer": optim, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 101, (32, 16), generator=g)
    return DataLoader(TensorDataset(x, (x[:, -1] > 50).float()), batch_size=8)


def fit(callback, epochs: int = 1) -> tuple[TinyClassifier, dict[str, torch.Tensor], pl.Trainer]:
    module = TinyClassifier()
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    trainer = pl.Trainer(max_epochs=epochs, callbacks=[callback], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")
    trainer.fit(module, loader())
    return module, before, trainer


def prefixes(names: set[str]) -> set[str]:
    return {n.rsplit(".", 1)[0] for n in names}


EXPECTED = {
    ("head", None): {"head"},
    ("last_block", None): {"head", "ln_f", "blocks.2.ln1", "blocks.2.attn.qkv", "blocks.2.attn.proj",
                           "blocks.2.ln2", "blocks.2.mlp.fc", "blocks.2.mlp.proj"},
    ("last_n", 2): {"head", "ln_f"} | {f"blocks.{i}.{m}" for i in (1, 2) for m in
                                       ("ln1", "attn.qkv", "attn.proj", "ln2", "mlp.fc", "mlp.proj")},
}


@pytest.mark.parametrize(("strategy", "n"), list(EXPECTED))
def test_static_strategies_train_exactly_their_parameters(strategy, n):
    module, before, trainer = fit(Freeze(strategy, n))
    trainable = module.seen_trainable[0]
    assert prefixes(trainable) == EXPECTED[(strategy, n)]
    after = module.model.state_dict()
    for name, tensor in before.items():
        if name in trainable:
            assert not torch.equal(after[name], tensor), f"{name} did not train"
        else:
            assert torch.equal(after[name], tensor), f"frozen {name} changed"
    optimised = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    frozen = [p for n, p in module.model.named_parameters() if n not in trainable]
    assert not any(id(p) in optimised for p in frozen)  # no optimiser state for frozen params
    assert all(p.grad is None for p in frozen)


def test_full_trains_everything():
    module, before, _ = fit(Freeze("full"))
    assert module.seen_trainable[0] == set(dict(module.model.named_parameters()))
    after = module.model.state_dict()
    assert all(not torch.equal(after[k], v) for k, v in before.items())


def test_paper_recipe_parameter_count():
    model = GPT(GPTConfig(out_features=1))

    class Holder(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

    Freeze("last_block").freeze_before_training(Holder())
    assert count_trainable(model) == 49_985  # as the paper and the released fine-tunes


def test_gradual_unfreezes_on_schedule():
    module, before, trainer = fit(GradualUnfreeze(every_k_epochs=2, lr_decay=0.5), epochs=7)
    seen = {epoch: prefixes(names) for epoch, names in module.seen_trainable.items()}
    top = {"head", "ln_f"}
    block = lambda i: {f"blocks.{i}.{m}" for m in  # noqa: E731
                       ("ln1", "attn.qkv", "attn.proj", "ln2", "mlp.fc", "mlp.proj")}
    assert seen[0] == seen[1] == top
    assert seen[2] == seen[3] == top | block(2)
    assert seen[4] == seen[5] == top | block(2) | block(1)
    assert seen[6] == top | block(2) | block(1) | block(0)
    groups = trainer.optimizers[0].param_groups
    # head+ln_f (decay, no decay), then a decay and a no-decay group per unfrozen block
    assert len(groups) == 2 + 2 * 3
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0] * 4
    sched = trainer.lr_scheduler_configs[0].scheduler
    assert len(sched.base_lrs) == len(sched.lr_lambdas) == 8
    assert sched.base_lrs[2:] == pytest.approx([1e-2 * f for f in (0.5, 0.5, 0.25, 0.25,
                                                                    0.125, 0.125)])
    # the embeddings are never unfrozen in 7 epochs at k=2: still bit-identical
    after = module.model.state_dict()
    assert torch.equal(after["token_embedding.weight"], before["token_embedding.weight"])


def test_bad_settings():
    with pytest.raises(ValueError, match="unknown freeze strategy|Freeze takes"):
        Freeze("some")
    with pytest.raises(ValueError, match="freeze.n"):
        fit(Freeze("last_n", n=9))
    with pytest.raises(ValueError, match="every_k_epochs"):
        GradualUnfreeze(every_k_epochs=0)
