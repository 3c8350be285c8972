"""OmegaConf resolvers of the config tree, registered on import (``heartgpt.train``,
``heartgpt.prepare`` and :func:`heartgpt.training.run.compose_config` import this module first).

- ``${cwd:}``: the directory the command was started in. Unlike ``${hydra:runtime.cwd}`` it
  also resolves where Hydra has not set its config yet: the multirun sweeper and launchers
  read ``hydra.sweep.dir`` (and through it ``paths.log_dir``) before any job starts.
- ``${latest_ckpt:<dir>[,<command>]}``: the ``last.ckpt`` of the newest *finished* run under
  ``<dir>`` (what a fine-tune starts from), see :func:`latest_checkpoint`.
- ``${tokens:<seconds>,<rate>}``: how many tokens ``seconds`` of signal at ``rate`` Hz are
  (``${tokens:2.0,${modality.sample_rate}}``: 200 for ECG, 100 for PPG); an error unless whole.
- ``${file_name:<path>}``: a file name without its folder (``predict``'s default ``out_dir``
  names the checkpoint file it used: ``x.zip`` and its export ``x.onnx`` get separate folders).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from omegaconf import OmegaConf

from heartgpt.training.resume import find_last_checkpoint, unfinished_runs

log = logging.getLogger(__name__)


def launch_dir() -> str:
    """``${cwd:}``: Hydra's ``runtime.cwd`` when a job's config is set, else ``os.getcwd()``
    (the same directory: Hydra does not change the working directory)."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        cwd = HydraConfig.get().runtime.get("cwd")
        if cwd:
            return str(cwd)
    return os.getcwd()


def latest_checkpoint(runs_root: str, make_it: str | None = None) -> str:
    """``${latest_ckpt:<dir>[,<command>]}``: ``last.ckpt`` of the newest run under ``<dir>``
    that finished (killed or pre-empted runs are passed over, with a warning naming them).

    When no run finished, an error saying what to run: ``<command>``, or by default the
    pre-training of the modality that ends ``<dir>``'s name.
    """
    found = find_last_checkpoint(runs_root, finished_only=True)
    newer = unfinished_runs(runs_root, newer_than=found)
    if newer:
        log.warning("latest_ckpt: passing over %d run(s) under %s that did not finish: %s",
                    len(newer), runs_root, ", ".join(str(r) for r in newer))
    if found is None:
        task = Path(runs_root).name
        make_it = make_it or f"python -m heartgpt.train modality={task.rsplit('_', 1)[-1]}"
        why = (f"no finished run under {runs_root}" if not newer else
               f"no run under {runs_root} finished ({newer[0]} stopped part-way; resume it "
               "with ckpt_path=<its last.ckpt>)")
        raise FileNotFoundError(
            f"{why}: run that training first (`{make_it}` for {task}), "
            "or set module.pretrained=<a .ckpt, .safetensors or released .zip>")
    log.info("latest_ckpt: %s", found)
    return str(found)


def file_name(path: str) -> str:
    """``${file_name:<path>}``: ``outputs/x/last.ckpt`` -> ``last.ckpt``."""
    return Path(str(path)).name


def tokens(seconds: float, rate: float) -> int:
    """``${tokens:<seconds>,<rate>}``: ``seconds * rate`` as a whole number of tokens."""
    count = float(seconds) * float(rate)
    if count < 1 or abs(count - round(count)) > 1e-9:
        raise ValueError(f"${{tokens:{seconds},{rate}}}: {seconds} s at {rate} Hz is {count:g} "
                         "tokens, not a whole number >= 1")
    return round(count)


def register_resolvers() -> None:
    """Register the resolvers above (idempotent)."""
    for name, fn in (("cwd", launch_dir), ("latest_ckpt", latest_checkpoint),
                     ("file_name", file_name), ("tokens", tokens)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register_resolvers()
