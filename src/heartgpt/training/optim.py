"""AdamW with weight-decay parameter groups, and the warm-up + cosine learning-rate schedule.

Weight decay applies to the weight matrices of ``nn.Linear`` layers only (attention QKV and
output projections, MLP, head). Biases, LayerNorm parameters and the token/position embeddings
are not decayed: they are not "weights" that decay should pull towards zero (as nanoGPT, but
nanoGPT also decays the embeddings; the released HeartGPT decayed everything at AdamW's 0.01).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

DECAY_PARAMS = ("linear", "all")


def param_groups(model: nn.Module, weight_decay: float, decay_params: str = "linear") -> list[dict]:
    """Split the trainable parameters of ``model`` into a decayed and a non-decayed group:
    ``decay_params='linear'`` decays ``nn.Linear`` weights only, ``'all'`` every parameter
    (torch's AdamW applied to ``model.parameters()``, as the released HeartGPT trained)."""
    if decay_params not in DECAY_PARAMS:
        raise ValueError(f"decay_params must be one of {DECAY_PARAMS}, got {decay_params!r}")
    decay: dict[str, nn.Parameter] = {}
    if decay_params == "all":
        decay = {n: p for n, p in model.named_parameters() if p.requires_grad}
    for module_name, module in model.named_modules():
        if decay_params == "linear" and isinstance(module, nn.Linear) and module.weight.requires_grad:
            decay[f"{module_name}.weight" if module_name else "weight"] = module.weight
    decay_ids = {id(p) for p in decay.values()}
    no_decay = [p for p in model.parameters() if p.requires_grad and id(p) not in decay_ids]
    return [
        {"params": list(decay.values()), "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def warmup_cosine(step: int, warmup_steps: int, decay_steps: int, min_lr_ratio: float) -> float:
    """LR multiplier at ``step``: linear warm-up from ~0 to 1, then cosine down to ``min_lr_ratio``.

    After ``decay_steps`` the multiplier stays at ``min_lr_ratio``. ``min_lr_ratio=1`` with
    ``warmup_steps=0`` is a constant learning rate (the released HeartGPT recipe).
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if step >= decay_steps:
        return min_lr_ratio
    progress = (step - warmup_steps) / max(1, decay_steps - warmup_steps)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(
    model: nn.Module, lr: float, betas: Sequence[float], weight_decay: float,
    decay_params: str = "linear",
) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` (fused on CUDA where available)."""
    on_cuda = next(model.parameters()).is_cuda
    return torch.optim.AdamW(
        param_groups(model, weight_decay, decay_params), lr=lr, betas=(float(betas[0]), float(betas[1])),
        fused=on_cuda or None,
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer, warmup_steps: int, decay_steps: int, min_lr_ratio: float
) -> LambdaLR:
    """Per-step :func:`warmup_cosine` schedule.

    The multiplier is a ``functools.partial`` (its ``__dict__`` is empty), so a resumed run keeps
    the schedule of its config rather than the one stored in the checkpoint: extending
    ``trainer.max_steps`` on resume stretches the cosine as expected.
    """
    if warmup_steps < 0 or decay_steps < warmup_steps:
        raise ValueError(f"need 0 <= warmup_steps <= decay_steps, got {warmup_steps}, {decay_steps}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    fn = partial(warmup_cosine, warmup_steps=warmup_steps, decay_steps=decay_steps,
                 min_lr_ratio=min_lr_ratio)
    return LambdaLR(optimizer, fn)
