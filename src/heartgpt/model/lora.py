"""LoRA (Hu et al., 2021) for :class:`~heartgpt.model.GPT`: low-rank adapters beside frozen
linear layers, and merging them back into plain weights.

``add_lora(model, rank=8, alpha=16, dropout=0.0, targets=("qkv", "proj"))`` swaps the chosen
``nn.Linear`` layers of every block for :class:`LoRALinear`, a ``Linear`` with two extra
matrices: ``y = x W^T + b + (alpha / rank) * dropout(x) A^T B^T`` with ``A`` (rank, in) drawn
as ``nn.Linear`` draws its weights and ``B`` (out, rank) zero, so an adapted model computes
exactly what it did before training. The base weights keep their names (``blocks.0.attn.qkv.
weight``): a released or pre-trained checkpoint loads into an adapted model unchanged.
``merge_lora(model)`` folds ``W + (alpha / rank) B A`` into plain ``nn.Linear`` layers: a
model with the released layout, the adapted model's outputs, nothing to import to run it.

Written here (about a hundred lines, as torchtune does) rather than taken from ``peft``: peft
pulls in ``transformers`` and ``accelerate`` for a 0.4 M-parameter model whose three linear
layer kinds are all it needs, and its wrapped state-dict keys (``base_layer``) would break the
released-checkpoint layout this package keeps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

# Which Linear of a Block each target names.
TARGETS = {"qkv": ("attn", "qkv"), "proj": ("attn", "proj"), "mlp": ("mlp", "fc", "mlp", "proj")}


class LoRALinear(nn.Linear):
    """``nn.Linear`` plus a trainable low-rank update ``(alpha / rank) * B A``."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float) -> None:
        if rank <= 0:
            raise ValueError(f"LoRA rank must be positive, got {rank}")
        super().__init__(base.in_features, base.out_features, bias=base.bias is not None,
                         device=base.weight.device, dtype=base.weight.dtype)
        self.weight = base.weight  # the same Parameters: frozen or not, as the base was
        self.bias = base.bias
        self.rank, self.alpha = int(rank), float(alpha)
        self.scale = self.alpha / self.rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, dtype=base.weight.dtype,
                                               device=base.weight.device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, dtype=base.weight.dtype,
                                               device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # as nn.Linear's own weights
        self.lora_dropout = nn.Dropout(dropout)

    def reset_parameters(self) -> None:  # nn.Linear.__init__ calls it before weight is shared
        pass

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = F.linear(F.linear(self.lora_dropout(x), self.lora_a), self.lora_b)  # (..., out)
        return F.linear(x, self.weight, self.bias) + self.scale * update

    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` computing what this layer computes (dropout off)."""
        plain = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                          device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            plain.weight.copy_(self.weight + self.scale * (self.lora_b @ self.lora_a))
            if self.bias is not None:
                plain.bias.copy_(self.bias)
        return plain

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha:g}"


def _layers(model: nn.Module, targets: Sequence[str]) -> list[tuple[nn.Module, str]]:
    """(parent module, attribute) of every Linear that ``targets`` name, block by block."""
    unknown = sorted(set(targets) - set(TARGETS))
    if unknown or not targets:
        raise ValueError(f"LoRA targets must be some of {sorted(TARGETS)}, got {list(targets)}")
    found = []
    for block in model.blocks:
        for target in targets:
            path = TARGETS[target]
            for parent, attr in zip(path[::2], path[1::2], strict=True):
                found.append((getattr(block, parent), attr))
    return found


def add_lora(model: nn.Module, *, rank: int, alpha: float, dropout: float,
             targets: Sequence[str]) -> nn.Module:
    """Give ``model`` (a :class:`~heartgpt.model.GPT`) LoRA adapters on ``targets`` (some of
    ``qkv``, ``proj`` (attention output), ``mlp`` (both MLP layers)), in place."""
    for parent, attr in _layers(model, targets):
        layer = getattr(parent, attr)
        if isinstance(layer, LoRALinear):
            raise ValueError(f"{attr} already has a LoRA adapter")
        setattr(parent, attr, LoRALinear(layer, rank, alpha, dropout))
    return model


def lora_layers(model: nn.Module) -> list[LoRALinear]:
    """The adapted layers of ``model`` (empty for a plain model)."""
    return [m for m in model.modules() if isinstance(m, LoRALinear)]


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The adapters' own parameters (``lora_a``, ``lora_b`` of every adapted layer)."""
    return [p for m in lora_layers(model) for p in (m.lora_a, m.lora_b)]


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its layer (plain ``nn.Linear`` again), in place; returns
    ``model``, which then has the state-dict layout of an un-adapted one."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LoRALinear):
                setattr(parent, name, child.merged())
    return model


def merge_lora_weights(weights: dict[str, torch.Tensor], rank: int, alpha: float,
                       **_: object) -> dict[str, torch.Tensor]:
    """A state dict with every adapter folded into its layer's weight, adapter keys dropped: the
    weights of the plain model :func:`merge_lora` makes (``rank``/``alpha``: the run's
    ``module.lora``; its other keys are ignored)."""
    scale = float(alpha) / int(rank)
    merged = {k: v for k, v in weights.items() if ".lora_" not in k}
    for key, a in weights.items():
        if key.endswith(".lora_a"):
            layer = key.removesuffix("lora_a")
            merged[layer + "weight"] = weights[layer + "weight"] + scale * (
                weights[layer + "lora_b"] @ a)
    return merged
