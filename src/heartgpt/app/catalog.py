"""Checkpoints the app offers: every weights file under the folders given on the command line,
or, when none is given, under the default folders (:func:`search_folders`).

Each file is loaded once at start-up to learn what it is (modality, pre-trained or
fine-tuned, task), so every tab lists only the checkpoints it can use; the tools load the
file again for each run (a released model loads in well under a second).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from heartgpt.cli import OUTPUTS_DIR
from heartgpt.heads.registry import misread_by_tools
from heartgpt.model.checkpoints import WEIGHTS_ENV, load_model, weights_dirs

log = logging.getLogger(__name__)

SUFFIXES = (".zip", ".pth", ".pt", ".ckpt", ".safetensors")
ROLES = ("lm", "af", "beats", "any")
NO_FOLDER_HINT = (f"pass checkpoint folders (python -m heartgpt.app path/to/weights, or make app "
                  f"ARGS=path/to/weights) or set ${WEIGHTS_ENV} to the folder of the released "
                  f"files")


def default_folders() -> list[Path]:
    """The folders searched when none is given: ``$HEARTGPT_WEIGHTS`` (when set), ``./weights``
    (the config's ``paths.weights_dir``) and ``./outputs``, as absolute paths, in that order."""
    folders = weights_dirs()
    outputs = Path(OUTPUTS_DIR).resolve()
    return folders if outputs in folders else [*folders, outputs]


def search_folders(given: Sequence[str | os.PathLike]) -> list[Path]:
    """The folders to search for checkpoints: ``given`` as it is (a missing one is an error of
    :func:`find_checkpoints`), or, when empty, those of :func:`default_folders` that exist.

    Logs which default folders it searches and, when none exists, how to give one.
    """
    if given:
        return [Path(f) for f in given]
    folders = default_folders()
    found = [f for f in folders if f.is_dir()]
    missing = [f for f in folders if not f.is_dir()]
    env = f"${WEIGHTS_ENV}" + ("" if os.environ.get(WEIGHTS_ENV) else " (not set)")
    if found:
        log.info("no FOLDER given: searching %s (default folders: %s, ./weights, ./outputs)%s",
                 ", ".join(map(str, found)), env,
                 "; not found: " + ", ".join(map(str, missing)) if missing else "")
    else:
        log.warning("no FOLDER given and none of the default folders exists (%s; %s, ./weights, "
                    "./outputs): %s", ", ".join(map(str, missing)), env, NO_FOLDER_HINT)
    return found


@dataclass(frozen=True)
class CheckpointInfo:
    """What a weights file holds."""

    path: Path
    label: str  # shown in the drop-downs
    modality: str | None
    task: str  # 'pretrain', 'af', 'beats', 'binary', ...
    n_out: int | None  # None: a language-model head
    n_layer: int
    n_head: int
    head: dict | None = None  # module.head of our fine-tunes; None: released or pre-trained

    def fits(self, role: str) -> bool:
        """Whether a tab of ``role`` ('lm', 'af', 'beats' or 'any') can use it: the AF and
        beat tabs list only the heads they read as trained (never a regression)."""
        if role == "lm":
            return self.n_out is None
        if role in ("af", "beats"):
            other = "beats" if role == "af" else "af"
            return (self.n_out == 1 and self.task != other and
                    (self.head is None or misread_by_tools(self.head, role == "beats") is None))
        return True


def describe(path: Path, name: str) -> CheckpointInfo:
    """Load ``path`` and describe it, labelled ``name``; raises what :func:`load_model` raises."""
    loaded = load_model(path)
    cfg = loaded.model.config
    kind = "pre-trained" if loaded.task == "pretrain" else f"fine-tuned: {loaded.task}"
    label = f"{name} ({(loaded.modality or '?').upper()}, {kind})"
    return CheckpointInfo(path, label, loaded.modality, loaded.task, cfg.out_features,
                          cfg.n_layer, cfg.n_head, loaded.head)


def find_checkpoints(folders: Iterable[str | os.PathLike]) -> list[CheckpointInfo]:
    """Every loadable weights file under ``folders`` (searched recursively), sorted by label.

    Files that do not load are logged and left out. Raises ``FileNotFoundError`` for a
    folder that does not exist.
    """
    found: list[CheckpointInfo] = []
    seen: set[Path] = set()
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such checkpoint folder")
        for found_at in sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES):
            path = found_at.resolve()
            if path in seen or not path.is_file():
                continue
            seen.add(path)
            try:
                found.append(describe(path, str(found_at.relative_to(folder))))
            except Exception as e:  # any unreadable file: skip it, say why
                log.warning("skipping %s: %s", path, e)
    return sorted(found, key=lambda i: i.label)


def choices(infos: list[CheckpointInfo], role: str) -> list[tuple[str, str]]:
    """(label, path) pairs of the checkpoints a tab of ``role`` can use."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    fit = [i for i in infos if i.fits(role)]
    if role == "any":  # pre-trained first: the default of the interpretability tabs
        fit.sort(key=lambda i: i.n_out is not None)
    return [(i.label, str(i.path)) for i in fit]


def default_base(infos: list[CheckpointInfo], tuned: str | None) -> str | None:
    """A pre-trained checkpoint of the same modality and shape as ``tuned`` (AF attention
    shift), or None."""
    by_path = {str(i.path): i for i in infos}
    t = by_path.get(tuned) if tuned else None
    for i in infos:
        if (t is not None and i.n_out is None and i.modality == t.modality
                and (i.n_layer, i.n_head) == (t.n_layer, t.n_head)):
            return str(i.path)
    return None
