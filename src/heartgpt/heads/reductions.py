"""Reductions: how a head reads the GPT's per-position outputs.

A :class:`Reduction` turns the (B, T, n_out) outputs of the GPT's linear head (and its (B, T, C)
hidden states) into the task's outputs: one row per window (``last`` position, ``mean`` over
positions, learned ``attention`` weights: the :data:`POOLINGS`) or one every ``stride`` positions
(:class:`Strided`, per-position tagging).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class Reduction(nn.Module):
    """(B, T, n_out) per-position outputs (and (B, T, C) hidden states) -> the task's outputs."""

    level = "sequence"  # 'sequence': (B, n_out) | 'position': (B, P, n_out)

    def forward(self, outputs: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class LastPosition(Reduction):
    """The last position: it has seen the whole window (the released AF models)."""

    def forward(self, outputs: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        return outputs[:, -1]  # (B, n_out)


class MeanPosition(Reduction):
    """The mean over positions (the head is linear: mean of outputs = head(mean hidden))."""

    def forward(self, outputs: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        return outputs.mean(dim=1)  # (B, n_out)


class AttentionPooling(Reduction):
    """A learned softmax weighting of positions, scored from the final hidden states.

    ``sum_t a_t head(h_t) = head(sum_t a_t h_t)``: the same as pooling the hidden states first.
    Its scorer trains whatever the freeze strategy (it is new, as the head)."""

    def __init__(self, n_embd: int) -> None:
        super().__init__()
        self.score = nn.Linear(n_embd, 1)
        nn.init.zeros_(self.score.weight)  # starts as the mean over positions
        nn.init.zeros_(self.score.bias)

    def forward(self, outputs: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(self.score(hidden).float(), dim=1)  # (B, T, 1)
        return (weights * outputs).sum(dim=1)  # (B, n_out)


class Strided(Reduction):
    """Every ``stride``-th position, ending each chunk of ``stride`` tokens: (B, T // stride, n_out).

    The k-th output describes tokens ``k*stride .. (k+1)*stride - 1`` and is read where the
    causal model has seen all of them."""

    level = "position"

    def __init__(self, stride: int) -> None:
        super().__init__()
        if stride < 1:
            raise ValueError(f"head.stride must be >= 1, got {stride}")
        self.stride = stride

    def forward(self, outputs: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        return outputs[:, self.stride - 1 :: self.stride]  # (B, T // stride, n_out)


# ``head.pooling``: one row per window, from the model width (n_embd).
POOLINGS: dict[str, Callable[[int], Reduction]] = {
    "last": lambda n_embd: LastPosition(),
    "mean": lambda n_embd: MeanPosition(),
    "attention": AttentionPooling,
}


def pooling(name: str, n_embd: int, allowed: tuple[str, ...] | None = None) -> Reduction:
    """The sequence reduction ``head.pooling: <name>`` (one of ``allowed``, default every
    one of :data:`POOLINGS`) for a model of width ``n_embd``."""
    allowed = tuple(POOLINGS) if allowed is None else allowed
    if name not in allowed:
        raise ValueError(f"head.pooling must be one of {allowed}, got {name!r}")
    return POOLINGS[name](n_embd)
