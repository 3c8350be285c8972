"""The released HeartGPT checkpoints: read them, and write ours in their layout.

The five released files (ECGPT_560k_iters, PPGPT_500k_iters, ECGPT_AF_1k_iters,
PPGPT_AF_1k_iters, PPGPT_beat_5k_iters) are plain state dicts with one module per attention
head, saved on a CUDA device, shipped as ``.pth`` inside a release ``.zip``. They load here on
any device, with ``weights_only=True`` (nothing is unpickled but tensors), into our fused-QKV
:class:`~heartgpt.model.GPT` with identical outputs.
"""

from __future__ import annotations

import io
import os
import re
import zipfile
from pathlib import Path

import torch

from heartgpt.heads.legacy import RELEASED_HEADS
from heartgpt.model.checkpoint_format import (
    CheckpointError,
    LoadedModel,
    existing_file,
    load_weights_only,
)
from heartgpt.model.gpt import GPT, GPTConfig

# The fine-tuned releases wrap their 1-unit head in a Sequential(Linear, Sigmoid).
_RELEASED_TASK_HEAD = "lm_head.linear1.0"
_RELEASED_LM_HEAD = "lm_head"


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """torch.load a ``.pth`` (or the single ``.pth`` inside a release ``.zip``) onto the CPU."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            inner = [n for n in names if n.endswith((".pth", ".pt"))]
            if len(inner) == 1:  # a release zip wrapping one .pth
                data = io.BytesIO(zf.read(inner[0]))
            elif any(n.endswith("data.pkl") for n in names):  # the .pth itself (torch zip format)
                data = path
            else:
                raise CheckpointError(
                    path, f"zip holds {len(inner)} .pth files ({inner[:5]}); expected exactly one"
                )
    else:
        data = path
    obj = load_weights_only(path, data, "a torch checkpoint")
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(path, f"not a state dict of tensors (got {type(obj).__name__})")
    return obj


def _require(sd: dict[str, torch.Tensor], keys: list[str], path: Path) -> None:
    missing = [k for k in keys if k not in sd]
    if missing:
        raise CheckpointError(
            path, f"not a HeartGPT state dict; missing {len(missing)} key(s), e.g. {missing[:4]}"
        )


def released_config(sd: dict[str, torch.Tensor], path: Path) -> tuple[GPTConfig, str]:
    """Infer the :class:`GPTConfig` and head kind ('lm' or 'binary') of a released state dict."""
    _require(sd, ["token_embedding_table.weight", "position_embedding_table.weight",
                  "ln_f.weight"], path)
    vocab_size, n_embd = sd["token_embedding_table.weight"].shape
    block_size = sd["position_embedding_table.weight"].shape[0]
    layers = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}
    heads = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.0\.sa\.heads\.(\d+)\.", k))}
    if not layers or not heads:
        raise CheckpointError(path, "no transformer blocks / attention heads found")
    if layers != set(range(len(layers))) or heads != set(range(len(heads))):
        raise CheckpointError(path, "block or head indices are not contiguous")
    if f"{_RELEASED_TASK_HEAD}.weight" in sd:
        head, out_features = "binary", 1
    elif f"{_RELEASED_LM_HEAD}.weight" in sd:
        head, out_features = "lm", None
    else:
        raise CheckpointError(path, f"no output head ('lm_head.weight' or "
                              f"'{_RELEASED_TASK_HEAD}.weight')")
    config = GPTConfig(
        vocab_size=int(vocab_size), block_size=int(block_size), n_embd=int(n_embd),
        n_head=len(heads), n_layer=len(layers), dropout=0.2,
        attn_scale=float(n_embd) ** -0.5,  # the release scales by n_embd, not head size
        out_features=out_features,
    )
    return config, head


# Per-block parameters whose tensors are the same in both layouts: released name -> ours.
_BLOCK_KEYS = {
    "ln1.weight": "ln1.weight", "ln1.bias": "ln1.bias",
    "ln2.weight": "ln2.weight", "ln2.bias": "ln2.bias",
    "sa.proj.weight": "attn.proj.weight", "sa.proj.bias": "attn.proj.bias",
    "ffwd.net.0.weight": "mlp.fc.weight", "ffwd.net.0.bias": "mlp.fc.bias",
    "ffwd.net.2.weight": "mlp.proj.weight", "ffwd.net.2.bias": "mlp.proj.bias",
}
_TOP_KEYS = {
    "token_embedding_table.weight": "token_embedding.weight",
    "position_embedding_table.weight": "position_embedding.weight",
    "ln_f.weight": "ln_f.weight", "ln_f.bias": "ln_f.bias",
}
_QKV = ("query", "key", "value")  # order of the fused projection's output rows


def convert_released_state_dict(
    sd: dict[str, torch.Tensor], config: GPTConfig, head: str, path: Path
) -> dict[str, torch.Tensor]:
    """Map the released per-head layout onto ours (fused QKV); drop the ``tril`` buffers."""
    prefix = _RELEASED_TASK_HEAD if head == "binary" else _RELEASED_LM_HEAD
    wanted = [*_TOP_KEYS, f"{prefix}.weight", f"{prefix}.bias"]
    for layer in range(config.n_layer):
        wanted += [f"blocks.{layer}.{k}" for k in _BLOCK_KEYS]
        wanted += [f"blocks.{layer}.sa.heads.{h}.{w}.weight" for h in range(config.n_head)
                   for w in _QKV]
    _require(sd, wanted, path)
    extra = sorted(set(sd) - set(wanted) - {k for k in sd if k.endswith(".tril")})
    if extra:
        raise CheckpointError(path, f"unexpected key(s) for a HeartGPT state dict: {extra[:4]}")

    out = {ours: sd[theirs] for theirs, ours in _TOP_KEYS.items()}
    out["head.weight"], out["head.bias"] = sd[f"{prefix}.weight"], sd[f"{prefix}.bias"]
    for layer in range(config.n_layer):
        b = f"blocks.{layer}."
        out.update({b + ours: sd[b + theirs] for theirs, ours in _BLOCK_KEYS.items()})
        # Heads are concatenated in order 0..n_head-1, which is how we split the fused output.
        q, k, v = (
            torch.cat([sd[f"{b}sa.heads.{h}.{w}.weight"] for h in range(config.n_head)])
            for w in _QKV
        )  # each (C, C)
        out[f"{b}attn.qkv.weight"] = torch.cat([q, k, v])  # (3C, C)
    return {k: v.float() for k, v in out.items()}


def to_released_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """Our model's weights in the released layout (per-head q/k/v, ``tril`` buffers included).

    The result loads into the released HeartGPT code and GUIs with ``load_state_dict``.
    """
    config = model.config
    if abs(config.scale - config.n_embd**-0.5) > 1e-12:
        raise ValueError("the released code scales attention by n_embd ** -0.5; this model "
                         f"uses {config.scale}, so its outputs would differ there")
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    out = {theirs: sd[ours] for theirs, ours in _TOP_KEYS.items()}
    prefix = _RELEASED_LM_HEAD if config.out_features is None else _RELEASED_TASK_HEAD
    out[f"{prefix}.weight"], out[f"{prefix}.bias"] = sd["head.weight"], sd["head.bias"]
    tril = torch.tril(torch.ones(config.block_size, config.block_size))
    hs = config.head_size
    for layer in range(config.n_layer):
        b = f"blocks.{layer}."
        out.update({b + theirs: sd[b + ours] for theirs, ours in _BLOCK_KEYS.items()})
        fused = sd[f"{b}attn.qkv.weight"].split(config.n_embd)  # q, k, v: each (C, C)
        for w, weight in zip(_QKV, fused, strict=True):
            for h in range(config.n_head):
                out[f"{b}sa.heads.{h}.{w}.weight"] = weight[h * hs : (h + 1) * hs].clone()
        for h in range(config.n_head):
            out[f"{b}sa.heads.{h}.tril"] = tril
    return out


def _guess_released_task(path: Path, head: str) -> str:
    name = path.name.lower()
    if head == "lm":
        return "pretrain"
    if "_af" in name:
        return "af"
    if "beat" in name:
        return "beats"
    return "binary"


def load_released(path: str | os.PathLike) -> LoadedModel:
    """Load a released HeartGPT checkpoint (``.zip`` or ``.pth``) into :class:`GPT` (eval mode).

    Vocab size and dimensions are read off the tensors; ECG/PPG is told by the vocab size
    (101 / 102). Fine-tuned files come with a 1-unit head: apply ``sigmoid`` to the outputs
    (AF: the last position is the probability; beats: every position).
    """
    path = existing_file(path)
    sd = _read_state_dict(path)
    config, head = released_config(sd, path)
    model = GPT(config)
    model.load_state_dict(convert_released_state_dict(sd, config, head, path), strict=True)
    model.eval()
    modality = {101: "ecg", 102: "ppg"}.get(config.vocab_size)
    task = _guess_released_task(path, head)
    return LoadedModel(model, modality, task, str(path), head=RELEASED_HEADS.get(task))
