"""Load and save HeartGPT weights: the released checkpoints, our safetensors export.

The five released files (ECGPT_560k_iters, PPGPT_500k_iters, ECGPT_AF_1k_iters,
PPGPT_AF_1k_iters, PPGPT_beat_5k_iters) are plain state dicts with one module per attention
head, saved on a CUDA device, shipped as ``.pth`` inside a release ``.zip``. They load here on
any device, with ``weights_only=True`` (nothing is unpickled but tensors), into our fused-QKV
:class:`~heartgpt.model.GPT` with identical outputs.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from heartgpt import __version__
from heartgpt.errors import InputError
from heartgpt.files import atomic_path
from heartgpt.heads.legacy import RELEASED_HEADS, head_of
from heartgpt.model import GPT, GPTConfig

if TYPE_CHECKING:
    from heartgpt.model.export import OnnxGPT

# The fine-tuned releases wrap their 1-unit head in a Sequential(Linear, Sigmoid).
_RELEASED_TASK_HEAD = "lm_head.linear1.0"
_RELEASED_LM_HEAD = "lm_head"
SAFETENSORS_FORMAT = "heartgpt-safetensors-1"
WEIGHTS_ENV = "HEARTGPT_WEIGHTS"  # folder of the released files, for bare names like ECGPT_560k_iters.zip


class CheckpointError(InputError):
    """A file is not a checkpoint this code can load; ``str()`` is ``"<file>: <problem>"``."""


@dataclass
class LoadedModel:
    """A model and what its file says about it."""

    model: GPT | OnnxGPT  # OnnxGPT: an .onnx export (forward only), see heartgpt.model.export
    modality: str | None  # 'ecg' / 'ppg' where known
    task: str  # 'pretrain', or for released fine-tunes 'af' / 'beats' / 'binary'
    source: str  # path it came from
    synthetic: bool = False  # trained on the SYNTHETIC demo data (its numbers mean nothing real)
    head: dict[str, Any] | None = None  # the fine-tune's module.head (kind, outputs, pooling, ...)
    head_state: tuple[str, ...] = ()  # tensors of the head outside the GPT (.ckpt task_head.*)


def warn_if_synthetic(loaded: LoadedModel, log: logging.Logger) -> None:
    """Log that ``loaded`` was trained on the SYNTHETIC demo data, if it was."""
    if loaded.synthetic:
        log.warning("%s was trained on SYNTHETIC demo data: what it predicts says nothing "
                    "about real recordings", loaded.source)


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


UNSAFE_LOAD_ENV = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


def load_weights_only(source: str | os.PathLike, data: Any, what: str) -> Any:
    """``torch.load(data, weights_only=True)`` onto the CPU: nothing but tensors and plain
    containers is unpickled, so a crafted file cannot run code. Every checkpoint read of
    heartgpt goes through here (Lightning's ``ckpt_path`` through
    :class:`heartgpt.training.checkpoint_io.SafeCheckpointIO`).

    Raises:
        CheckpointError: ``$TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` is set (it turns unpickling of
            arbitrary code back on for loaders that do not ask explicitly; heartgpt refuses to
            run with it); the file is empty, damaged or holds other objects ("cannot read as
            ``what``", with the first line of torch's reason and never its advice to retry
            with ``weights_only=False``).
    """
    if os.environ.get(UNSAFE_LOAD_ENV, "").strip().lower() not in ("", "0", "false"):
        raise CheckpointError(source, f"${UNSAFE_LOAD_ENV} is set: it lets checkpoint files run "
                              "code when they are read; heartgpt loads weights only, unset it")
    if isinstance(data, (str, os.PathLike)) and Path(data).is_file() \
            and Path(data).stat().st_size == 0:
        raise CheckpointError(source, "is empty (0 bytes): its save was interrupted")
    try:
        return torch.load(data, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and EOF errors of a damaged or foreign file
        text = str(e).strip()
        reason = next((line.strip() for line in text.splitlines()
                       if line.strip() and "weights_only" not in line), type(e).__name__)
        raise CheckpointError(source, f"cannot read as {what} ({type(e).__name__}: "
                              f"{reason[:200]})") from None


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
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    sd = _read_state_dict(path)
    config, head = released_config(sd, path)
    model = GPT(config)
    model.load_state_dict(convert_released_state_dict(sd, config, head, path), strict=True)
    model.eval()
    modality = {101: "ecg", 102: "ppg"}.get(config.vocab_size)
    task = _guess_released_task(path, head)
    return LoadedModel(model, modality, task, str(path), head=RELEASED_HEADS.get(task))


def save_safetensors(
    model: GPT, path: str | os.PathLike, modality: str | None = None, task: str = "pretrain",
    synthetic: bool = False, head: dict[str, Any] | None = None,
) -> Path:
    """Export ``model`` to a safetensors file that carries its own config, its fine-tuning
    ``head`` (how its outputs are read) and whether it was trained on the SYNTHETIC demo data;
    written atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    metadata = {
        "format": SAFETENSORS_FORMAT,
        "config": json.dumps(model.config.to_dict()),
        "modality": modality or "",
        "task": task,
        "synthetic": "true" if synthetic else "false",
        "heartgpt_version": __version__,
        **({"head": json.dumps(head, sort_keys=True)} if head else {}),
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


# A stored config beyond these is refused before anything is allocated (the released model:
# vocab 101/102, block 500, n_embd 64, 8 heads, 8 layers).
CONFIG_LIMITS = {"vocab_size": 65_536, "block_size": 1_000_000, "n_embd": 65_536,
                 "n_head": 4_096, "n_layer": 1_024}


def checked_config(config: Any, weights: dict[str, torch.Tensor], path: Path) -> GPTConfig:
    """The :class:`GPTConfig` a file stores, once it is within :data:`CONFIG_LIMITS` and the
    shapes of its model (built on the meta device: no memory) are those of ``weights``."""
    if not isinstance(config, dict):
        raise CheckpointError(path, f"stored model config is not a mapping: {config!r:.80}")
    for key, limit in CONFIG_LIMITS.items():
        value = config.get(key)
        if value is not None and not (isinstance(value, int) and not isinstance(value, bool)
                                      and 1 <= value <= limit):
            raise CheckpointError(path, f"stored model config {key}={value!r:.40} is not an "
                                  f"integer in [1, {limit}]")
    try:
        cfg = GPTConfig.from_dict(config)
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in GPT(cfg).state_dict().items()}
    except (TypeError, ValueError) as e:
        raise CheckpointError(path, f"stored model config cannot be used: {e}") from None
    found = {k: tuple(v.shape) for k, v in weights.items()}
    if found != expected:
        missing = sorted(expected.keys() - found.keys())
        extra = sorted(found.keys() - expected.keys())
        shapes = [f"{k} {found[k]} vs {expected[k]}" for k in sorted(expected.keys() & found.keys())
                  if found[k] != expected[k]]
        parts = [f"{what}: {', '.join(items[:3])}{' ...' if len(items) > 3 else ''}"
                 for what, items in (("missing", missing), ("unexpected", extra),
                                     ("shape (file vs config)", shapes)) if items]
        raise CheckpointError(path, "weights do not match the stored config (" + "; ".join(parts)
                              + ")")
    return cfg


def _model_of(config: dict, weights: dict[str, torch.Tensor], path: Path) -> GPT:
    """A :class:`GPT` of the stored ``config`` holding ``weights`` (all of them), in eval mode;
    the config is checked against the weights before the model is built."""
    model = GPT(checked_config(config, weights, path))
    model.load_state_dict(weights, strict=True)
    return model.eval()


def load_safetensors(path: str | os.PathLike) -> LoadedModel:
    """Load a file written by :func:`save_safetensors` (eval mode)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
    except Exception as e:
        raise CheckpointError(path, f"cannot read as safetensors: {e}") from e
    if metadata.get("format") != SAFETENSORS_FORMAT:
        raise CheckpointError(path, f"not a heartgpt safetensors export "
                              f"(format={metadata.get('format')!r})")
    try:
        config = json.loads(metadata.get("config", ""))
    except ValueError:
        raise CheckpointError(path, "its 'config' metadata is not JSON") from None
    model = _model_of(config, tensors, path)
    task = metadata.get("task", "pretrain")
    try:
        head = json.loads(metadata["head"]) if metadata.get("head") else RELEASED_HEADS.get(task)
    except ValueError:
        raise CheckpointError(path, "its 'head' metadata is not JSON") from None
    return LoadedModel(model, metadata.get("modality") or None, task, str(path),
                       metadata.get("synthetic") == "true", head=head)


def load_lightning(path: str | os.PathLike) -> LoadedModel:
    """Load the GPT out of one of our Lightning ``.ckpt`` files (eval mode); a LoRA run's
    adapters are merged into their layers (:func:`heartgpt.model.lora.merge_lora_weights`). A
    LoRA checkpoint that holds the adapters only reads the rest from the base file it names,
    which must be there with the recorded sha256 (:mod:`heartgpt.training.adapter_checkpoint`).

    The LightningModules keep the network as ``self.model`` and save ``model_config`` (the
    :class:`GPTConfig` fields), ``modality`` and ``task`` as plain hyper-parameters, so this
    needs neither Hydra nor unpickling beyond tensors and containers.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    ckpt = load_weights_only(path, path, "a Lightning checkpoint")
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hparams, dict) or "model_config" not in hparams or "state_dict" not in ckpt:
        raise CheckpointError(path, "not a heartgpt Lightning checkpoint "
                              "(no 'state_dict' or no 'model_config' hyper-parameter)")
    if ckpt.get("base_weights"):  # a LoRA run's adapters: the rest from its (verified) base
        from heartgpt.training.adapter_checkpoint import fill_from_base

        fill_from_base(ckpt, source=path)
    weights = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()
               if k.startswith("model.")}
    weights = {k.removeprefix("_orig_mod."): v for k, v in weights.items()}  # torch.compile
    if hparams.get("lora"):  # a LoRA run: its adapters folded in, a plain model of the same outputs
        from heartgpt.model.lora import merge_lora_weights

        weights = merge_lora_weights(weights, **dict(hparams["lora"]))
    model = _model_of(hparams["model_config"], weights, path)
    head_state = tuple(k.removeprefix("task_head.") for k in ckpt["state_dict"]
                       if k.startswith("task_head."))
    return LoadedModel(model, hparams.get("modality"), hparams.get("task", "pretrain"), str(path),
                       bool(hparams.get("synthetic_data", False)), head=head_of(hparams),
                       head_state=head_state)


def weights_dirs(weights_dir: str | os.PathLike | None = None) -> list[Path]:
    """Where a bare checkpoint name is looked for, in order: ``weights_dir`` (the config's
    ``paths.weights_dir``), then ``$HEARTGPT_WEIGHTS``, then ``./weights``."""
    found = [weights_dir, os.environ.get(WEIGHTS_ENV), "weights"]
    dirs: list[Path] = []
    for d in found:
        if d and Path(d).expanduser().resolve() not in dirs:
            dirs.append(Path(d).expanduser().resolve())
    return dirs


def find_weights(path: str | os.PathLike, weights_dir: str | os.PathLike | None = None) -> Path:
    """The checkpoint file ``path`` names: as given when it exists; a bare file name
    (``PPGPT_500k_iters.zip``) is also looked up in :func:`weights_dirs`. Raises
    FileNotFoundError saying every place it looked."""
    given = Path(path).expanduser()
    if given.is_file():
        return given
    looked = [given.resolve()]
    if len(given.parts) == 1:
        for d in weights_dirs(weights_dir):
            if (d / given).is_file():
                return d / given
            looked.append(d / given)
    where = ", ".join(str(p) for p in looked)
    raise FileNotFoundError(
        f"{path}: no such checkpoint file (looked in: {where}; set paths.weights_dir or "
        f"${WEIGHTS_ENV} to the folder of the released files)")


def load_model(path: str | os.PathLike, weights_dir: str | os.PathLike | None = None) -> LoadedModel:
    """Load any HeartGPT weights file.

    A released ``.zip``/``.pth``, one of our Lightning ``.ckpt`` files, a ``.safetensors``
    export or an ``.onnx`` export (an :class:`~heartgpt.model.export.OnnxGPT` run by ONNX
    Runtime, which must be installed: ``pip install 'heartgpt[onnx]'``); the kind is told by
    the suffix (``.ckpt``, ``.safetensors``, ``.onnx``, anything else released). A bare name is
    looked up as :func:`find_weights` says.
    """
    path = find_weights(path, weights_dir)
    if path.suffix == ".onnx":
        from heartgpt.model.export import load_onnx  # onnxruntime stays optional

        return load_onnx(path)
    if path.suffix == ".safetensors":
        return load_safetensors(path)
    if path.suffix == ".ckpt":
        return load_lightning(path)
    return load_released(path)


def require_torch(loaded: LoadedModel, use: str) -> GPT:
    """``loaded.model`` when it is a PyTorch :class:`GPT`; an ONNX export (forward only, no
    trainable weights) is a :class:`CheckpointError` saying that ``use`` needs the original."""
    if not isinstance(loaded.model, GPT):
        raise CheckpointError(loaded.source, f"is an ONNX export: {use} needs the PyTorch "
                              "checkpoint it was exported from")
    return loaded.model


def check_vocab(loaded: LoadedModel, vocab_size: int, what: str = "the data") -> None:
    """Raise a clear error when a checkpoint's vocabulary does not match ``vocab_size``."""
    have = loaded.model.config.vocab_size
    if have != vocab_size:
        raise CheckpointError(
            loaded.source, f"checkpoint vocab size {have} "
            f"({loaded.modality or 'unknown modality'}) does not match {what} "
            f"(vocab size {vocab_size})"
        )


# Fields that must agree for weights to carry over (dropout may differ; the head may not).
_SHAPE_FIELDS = ("vocab_size", "block_size", "n_embd", "n_head", "n_layer")


FINETUNED_TASKS = ("af", "beats")


def check_starting_point(loaded: LoadedModel, ours: GPTConfig, modality: str | None = None,
                         task: str | None = None) -> None:
    """Raise :class:`CheckpointError` unless ``loaded`` can start a model of config ``ours`` for
    ``modality`` and ``task`` (see :func:`init_from_pretrained`): ``train`` asks before
    anything starts, ``init_from_pretrained`` again when it copies the weights."""
    path = loaded.source
    require_torch(loaded, "initialising a model")
    theirs = loaded.model.config
    if modality is not None and loaded.modality is not None and loaded.modality != modality:
        raise CheckpointError(path, f"a {loaded.modality.upper()} checkpoint cannot start a "
                              f"{modality.upper()} model")
    if task is not None and loaded.task in FINETUNED_TASKS and loaded.task != task:
        raise CheckpointError(path, f"is fine-tuned for {loaded.task}; it cannot start task "
                              f"{task}: start from the pre-trained model (e.g. "
                              f"{(loaded.modality or 'ppg').upper()}PT released weights) or a "
                              f"{task} checkpoint")
    check_vocab(loaded, ours.vocab_size, what=f"this {modality or ''} model".replace("  ", " "))
    diff = {f: (getattr(theirs, f), getattr(ours, f)) for f in _SHAPE_FIELDS
            if getattr(theirs, f) != getattr(ours, f)}
    if abs(theirs.scale - ours.scale) > 1e-12:
        diff["attention scale"] = (theirs.scale, ours.scale)
    if diff:
        detail = ", ".join(f"{k}: file {a} vs model {b}" for k, (a, b) in diff.items())
        raise CheckpointError(path, f"does not fit this model ({detail})")


def init_from_pretrained(model: GPT, path: str | os.PathLike, modality: str | None = None,
                         task: str | None = None) -> LoadedModel:
    """Copy the weights of ``path`` (anything :func:`load_model` reads) into ``model``.

    The trunk (embeddings, blocks, final norm) must match in shape and attention scale; the head
    is copied when it has the same shape, and otherwise left as initialised -- a language-model
    checkpoint starting a 1-unit fine-tuning head. A vocab, modality or shape mismatch raises
    :class:`CheckpointError` naming the file, before any training; so does a model fine-tuned
    for another task (``af`` / ``beats``) starting ``task``: its last block and head were
    trained to read windows another way (a per-window AF head is not a per-token beat head).
    """
    loaded = load_model(path)
    check_starting_point(loaded, model.config, modality, task)
    ours, theirs = model.config, loaded.model.config
    weights = loaded.model.state_dict()
    if theirs.n_out != ours.n_out:
        weights = {k: v for k, v in weights.items() if not k.startswith("head.")}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    # a new head, and LoRA adapters (heartgpt.model.lora) the starting point does not have
    assert not unexpected and all(k.startswith("head.") or ".lora_" in k for k in missing), (
        missing, unexpected)
    return loaded
