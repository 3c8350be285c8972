"""``python -m heartgpt.export``: a deployment export of a checkpoint (Hydra config ``conf/export.yaml``).

    python -m heartgpt.export checkpoint=ECGPT_AF_1k_iters.zip              # outputs/export/ECGPT_AF_1k_iters.onnx
    python -m heartgpt.export checkpoint=last.ckpt format=torch_export out=model.pt2
    python -m heartgpt.export checkpoint=lora/last.ckpt format=safetensors   # LoRA merged
    python -m heartgpt.export checkpoint=run/checkpoints/last.ckpt format=hub out=hub/af

Writes an ONNX file (ONNX Runtime), a ``torch.export`` program (``.pt2``) or the plain weights
(``.safetensors``: a LoRA run's adapters merged into their layers, a model of the released
layout and the adapted model's outputs) or a model-hub folder (``format=hub``: weights,
``config.json`` and a ``README.md`` model card with the run's metrics,
:mod:`heartgpt.training.hub_export`), then runs it on
deterministic token windows and compares it with the PyTorch model
(:func:`heartgpt.model.export.check_export`; a head with tensors outside the GPT, attention
pooling or a regression, is exported with them and compared with its head applied): one line with the file, its size and the largest
differences of the probabilities and logits; a file that disagrees beyond the tolerances is
removed and the exit status is 1. :func:`export` is the whole job for a composed config;
:func:`main` is the Hydra entry point. The formats, the metadata and the tolerances:
:mod:`heartgpt.model.export`.
"""

from __future__ import annotations

import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

import heartgpt.training.resolvers  # noqa: F401  (registers ${cwd:} before Hydra composes)
from heartgpt.errors import ConfigError, InputError, error_line, one_line_errors
from heartgpt.model.checkpoint_format import require_torch
from heartgpt.model.checkpoints import find_weights, load_model
from heartgpt.model.export import (
    FORMATS,
    PROB_ATOL,
    ExportCheck,
    check_export,
    export_onnx,
    export_program,
)
from heartgpt.model.hub_folder import remove_hub
from heartgpt.model.safetensors_file import save_safetensors
from heartgpt.training.config_checks import CHECKPOINT_WANTED, require_given
from heartgpt.training.hub_export import export_hub, hub_name


def output_path(cfg: DictConfig, checkpoint: Path) -> Path:
    """``cfg.out``, or ``<paths.log_dir>/export/<checkpoint stem>.onnx|.pt2|.safetensors`` (a
    hub folder: ``<paths.log_dir>/export/<checkpoint stem>/``)."""
    if cfg.get("out"):
        return Path(cfg.out)
    return Path(cfg.paths.log_dir) / "export" / f"{hub_name(checkpoint)}{FORMATS[cfg.format]}"


def _size_text(n_bytes: int) -> str:
    return f"{n_bytes / 1e3:.0f} kB" if n_bytes < 1e6 else f"{n_bytes / 1e6:.1f} MB"


def export(cfg: DictConfig) -> ExportCheck:
    """Export ``cfg.checkpoint`` as ``cfg.format`` to :func:`output_path`, check it against
    PyTorch and print the result line; a file that fails the check is removed.

    Raises:
        InputError: an unknown format, a checkpoint that cannot be loaded or exported (an
            ``.onnx``), or an export whose outputs differ from PyTorch's (naming the file).
        FileNotFoundError: no such checkpoint.
        ImportError: ``format=onnx`` without ``onnx``/``onnxscript``/``onnxruntime``.
    """
    fmt = cfg.format
    if fmt not in FORMATS:
        *first, last = FORMATS
        raise InputError(f"format={fmt}", f"unknown export format; use {', '.join(first)} or {last}")
    checkpoint = find_weights(cfg.checkpoint, cfg.paths.get("weights_dir")).resolve()
    loaded = load_model(checkpoint)
    require_torch(loaded, "exporting")
    if loaded.head_state and fmt == "torch_export":  # a .pt2 holds the plain GPT only
        raise InputError(str(checkpoint), f"its {loaded.head.get('kind') if loaded.head else ''} "
                         f"head keeps state outside the network ({', '.join(loaded.head_state)})"
                         " that a torch_export program cannot hold; use format=onnx or "
                         "format=safetensors")
    out = output_path(cfg, checkpoint)
    start = time.perf_counter()
    if fmt == "onnx":
        export_onnx(loaded, out, opset=cfg.get("opset"))
    elif fmt == "safetensors":  # a LoRA .ckpt loads merged: a plain GPT, no lora keys
        save_safetensors(loaded.model, out, loaded.modality, loaded.task, loaded.synthetic,
                         head=loaded.head, head_state=loaded.head_state or None,
                         label_schema=loaded.hparams.get("label_schema"))
    elif fmt == "hub":  # a folder: weights, config.json, trust state, model card
        export_hub(loaded, checkpoint, out, str(cfg.license), cfg.get("eval_metrics"))
    else:
        export_program(loaded, out)
    seconds = time.perf_counter() - start
    remove = remove_hub if fmt == "hub" else (lambda p: p.unlink(missing_ok=True))
    try:
        check = check_export(loaded, out)
    except BaseException:
        remove(out)
        raise
    if not check.ok:
        remove(out)
        raise InputError(out, f"{check.problem()}; the {'folder' if fmt == 'hub' else 'file'} "
                         "was removed")
    shapes = ", ".join(f"{b}x{t}" for b, t in check.shapes)
    kind = {"onnx": "ONNX model", "torch_export": "torch.export program",
            "safetensors": "safetensors weights", "hub": "hub folder"}[fmt]
    size = (sum(f.stat().st_size for f in out.iterdir()) if out.is_dir()
            else out.stat().st_size)
    probs = (f"probabilities {check.prob_diff:.1e} (<= {PROB_ATOL:g}), "
             if check.has_probabilities else "")
    compared = check.compared if check.has_probabilities else "values (the labels' units)"
    print(f"{out}: {kind} of {checkpoint.name} ({_size_text(size)}, "
          f"{seconds:.1f} s){' with its head' if loaded.head_state else ''}; max |difference| "
          f"from PyTorch on tokens {shapes}: {probs}{compared} "
          f"{check.logit_diff:.1e} (<= {check.logit_tol:.1e})", flush=True)
    return check


@hydra.main(config_path="pkg://heartgpt.conf", config_name="export", version_base="1.3")
def hydra_main(cfg: DictConfig) -> ExportCheck:
    """Hydra entry point; a checkpoint that cannot be exported is one error line."""
    with one_line_errors():
        require_given(cfg, "checkpoint", CHECKPOINT_WANTED)
        try:
            return export(cfg)
        except ImportError as e:  # the onnx extra is not installed
            raise ConfigError("format", error_line(e)) from None


def main() -> ExportCheck | None:
    """``python -m heartgpt.export`` (the ``heartgpt-export`` script)."""
    return hydra_main()


if __name__ == "__main__":
    main()
