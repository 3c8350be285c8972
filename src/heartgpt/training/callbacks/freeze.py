"""Layer freezing for fine-tuning, as Lightning callbacks (config group ``freeze/``).

The LightningModule keeps its :class:`~heartgpt.model.GPT` as ``pl_module.model`` and builds its
optimiser from the parameters that still require grad, so frozen parameters get neither
gradients nor optimiser state. Parameters are grouped from the top of the network down:
``head``, ``ln_f``, ``blocks[-1]``, ..., ``blocks[0]``, then the embeddings.

- ``full``: everything trains.
- ``head``: only the new head.
- ``last_block``: head + final LayerNorm + the last transformer block (the paper's recipe,
  49,985 trainable parameters on the released size).
- ``last_n``: head + final LayerNorm + the last ``n`` blocks.
- LoRA adapters (``finetune=lora``), when the model has them, train under every strategy.
- ``gradual``: head + final LayerNorm first, then one more block from the top every
  ``every_k_epochs`` epochs, the embeddings last (ULMFiT); each newly unfrozen group may get a
  learning rate ``lr_decay`` times that of the group above it.
"""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BaseFinetuning
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from heartgpt.model.lora import lora_parameters
from heartgpt.training.optim import param_groups

STRATEGIES = ("full", "head", "last_block", "last_n", "gradual")


def unfreeze_order(model: nn.Module) -> list[nn.Module | list[nn.Module]]:
    """Module groups from the top of the network to the bottom, in unfreezing order."""
    blocks = list(model.blocks)
    return [model.head, model.ln_f, *reversed(blocks), [model.token_embedding,
                                                        model.position_embedding]]


def trainable_modules(model: nn.Module, strategy: str, n: int | None = None) -> list[nn.Module]:
    """The modules a static strategy leaves trainable."""
    if strategy == "full":
        return [model]
    if strategy == "head":
        return [model.head]
    if strategy in ("last_block", "last_n"):
        n_blocks = 1 if strategy == "last_block" else n
        if n_blocks is None or not 0 <= n_blocks <= len(model.blocks):
            raise ValueError(f"freeze.n must be in 0..{len(model.blocks)} for last_n, got {n}")
        return [model.head, model.ln_f, *list(model.blocks)[len(model.blocks) - n_blocks:]]
    raise ValueError(f"unknown freeze strategy {strategy!r}; expected one of {STRATEGIES}")


def _train_adapters(model: nn.Module) -> None:
    """LoRA adapters (``module.lora``, :mod:`heartgpt.model.lora`) train under every strategy:
    ``freeze=head finetune=lora`` is the head plus the adapters; their base weights stay as the
    strategy leaves them."""
    for p in lora_parameters(model):
        p.requires_grad_(True)


def count_trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _log_trainable(trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
    n = count_trainable(pl_module)
    for logger in trainer.loggers:
        logger.log_metrics({"trainable_params": float(n)}, step=trainer.global_step)


class Freeze(BaseFinetuning):
    """Freeze all but the chosen top of the model for the whole run (``full``, ``head``,
    ``last_block``, ``last_n``)."""

    def __init__(self, strategy: str, n: int | None = None) -> None:
        super().__init__()
        if strategy not in STRATEGIES or strategy == "gradual":
            raise ValueError(f"Freeze takes one of {STRATEGIES[:-1]}, got {strategy!r} "
                             "(use GradualUnfreeze for 'gradual')")
        self.strategy, self.n = strategy, n

    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        model = pl_module.model
        keep = trainable_modules(model, self.strategy, self.n)
        self.freeze(model, train_bn=True)
        self.make_trainable(keep)
        _train_adapters(model)

    def finetune_function(self, pl_module: pl.LightningModule, epoch: int,
                          optimizer: Optimizer) -> None:
        if epoch == 0:
            _log_trainable(pl_module.trainer, pl_module)


class GradualUnfreeze(BaseFinetuning):
    """ULMFiT-style gradual unfreezing: one more group from the top every ``every_k_epochs``."""

    def __init__(self, every_k_epochs: int = 1, lr_decay: float = 1.0) -> None:
        super().__init__()
        if every_k_epochs < 1:
            raise ValueError(f"every_k_epochs must be >= 1, got {every_k_epochs}")
        if not 0 < lr_decay <= 1:
            raise ValueError(f"lr_decay must be in (0, 1], got {lr_decay}")
        self.every_k_epochs, self.lr_decay = every_k_epochs, lr_decay

    def n_unfrozen_blocks(self, epoch: int) -> int:
        """Groups below ``head`` + ``ln_f`` unfrozen by the start of ``epoch``."""
        return epoch // self.every_k_epochs

    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        model = pl_module.model
        self.freeze(model, train_bn=True)
        self.make_trainable([model.head, model.ln_f])
        _train_adapters(model)

    def finetune_function(self, pl_module: pl.LightningModule, epoch: int,
                          optimizer: Optimizer) -> None:
        groups = unfreeze_order(pl_module.model)[2:]  # below head and ln_f
        target = min(self.n_unfrozen_blocks(epoch), len(groups))
        changed = False
        for depth, group in enumerate(groups[:target], start=1):
            modules = group if isinstance(group, list) else [group]
            if all(p.requires_grad for m in modules for p in m.parameters()):
                continue  # already unfrozen (also after a resume)
            self.make_trainable(modules)
            lr = optimizer.param_groups[0]["lr"] * self.lr_decay**depth
            on_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
            decay = optimizer.param_groups[0].get("weight_decay", 0.0)
            for group in param_groups(nn.ModuleList(modules), decay):  # same decay rule
                group["params"] = [p for p in group["params"] if id(p) not in on_optimizer]
                if group["params"]:  # after a resume they are on the optimiser already
                    optimizer.add_param_group({**group, "lr": lr})
            _follow_schedule(pl_module.trainer, optimizer)
            changed = True
        if changed or epoch == 0:
            _log_trainable(pl_module.trainer, pl_module)


def _follow_schedule(trainer: pl.Trainer, optimizer: Optimizer) -> None:
    """Make a LambdaLR schedule also drive a param group added after it was built.

    ``LambdaLR`` keeps one base lr and one lambda per group it saw at construction; a later
    group would otherwise keep a constant lr while the others warm up and decay.
    """
    for config in trainer.lr_scheduler_configs:
        sched = config.scheduler
        if sched.optimizer is not optimizer or not isinstance(sched, LambdaLR):
            continue
        while len(sched.lr_lambdas) < len(optimizer.param_groups):  # also after a resume
            sched.lr_lambdas.append(sched.lr_lambdas[0])
        for group in optimizer.param_groups[len(sched.base_lrs):]:
            factor = sched.lr_lambdas[0](sched.last_epoch)
            base = group["lr"] / factor if factor > 0 else group["lr"]
            group.setdefault("initial_lr", base)
            sched.base_lrs.append(base)
