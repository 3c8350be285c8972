"""Config keys renamed in heartgpt 0.2 and 0.3, and the one-line error an old key gives.

0.1 used "task" for six things; now the ``task`` group picks the job (pretrain | af | beats |
classify | regress | tag), its LightningModule is configured under ``module``, ``module.head``
says what the network predicts (0.3: a mapping, with the pooling and BCE weight that were
``module.*`` before; beat metrics under ``module.beats``), ``label_kind`` what a shard set holds
and ``run_name`` names the run folder. An old key anywhere -- a command-line override or a
config file -- stops the run before anything happens, naming the new key.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

from omegaconf import DictConfig, OmegaConf

from heartgpt.errors import UserError

# old dotted key (or prefix, ending in '.') -> new; first match wins
TRAIN_RENAMES: tuple[tuple[str, str], ...] = (
    ("task_name", "run_name"),
    ("task.task_type", "module.head"),
    ("data.task_type", "data.label_kind"),
    ("data.batch_size", "data.global_batch_size"),  # per process before; now over all of them
    ("task.", "module."),  # task=<name> still picks the task; its settings moved to module.*
    # heartgpt 0.3: the head is config (module.head.*), beat metrics under module.beats
    ("module.pooling", "module.head.pooling"),
    ("module.pos_weight", "module.head.pos_weight"),
    ("module.beat_tolerance_ms", "module.beats.tolerance_ms"),
    ("module.peak_height", "module.beats.peak_height"),
    ("module.peak_distance_ms", "module.beats.peak_distance_ms"),
    ("module.peak_max_width_ms", "module.beats.peak_max_width_ms"),
)
PREPARE_RENAMES: tuple[tuple[str, str], ...] = (("task_type", "label_kind"),)
_PREPARE_VALUES = {"pretrain": "unlabelled"}  # task_type=pretrain is label_kind=unlabelled


T = TypeVar("T")


class RenamedKeyError(UserError):
    """A config key of heartgpt 0.1 was used; the message names its new spelling."""


def _renamed(key: str, renames: Iterable[tuple[str, str]]) -> str | None:
    for old, new in renames:
        if old.endswith("."):
            if key.startswith(old):
                return new + key[len(old):]
        elif key == old or key.startswith(old + "."):
            return new + key[len(old):]
    return None


_NOTES = {"data.global_batch_size": " (it counts windows over all devices; "
                                    "data.micro_batch_size is per device)"}


def _message(key: str, new: str, value: str | None = None) -> str:
    if new in _NOTES:
        return f"config key {key!r} is now {new!r}{_NOTES[new]}: use {new} instead"
    if value is not None and value in _PREPARE_VALUES:
        return (f"config key {key!r} was renamed {new!r} in heartgpt 0.2: use "
                f"{new}={_PREPARE_VALUES[value]}")
    version = "0.3" if new.startswith(("module.head.", "module.beats.")) else "0.2"
    return f"config key {key!r} was renamed {new!r} in heartgpt {version}: use {new} instead"


def check_overrides(overrides: Iterable[str], renames: Iterable[tuple[str, str]]) -> None:
    """Raise :class:`RenamedKeyError` for a command-line override of an old key."""
    renames = tuple(renames)
    for arg in overrides:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        key = key.lstrip("+~")
        new = _renamed(key, renames)
        if new is not None:
            raise RenamedKeyError(_message(key, new, value))


def _keys(node: Mapping, prefix: str = "") -> Iterable[str]:
    for k, v in node.items():
        yield prefix + str(k)
        if isinstance(v, Mapping):
            yield from _keys(v, f"{prefix}{k}.")


def check_config(cfg: DictConfig, renames: Iterable[tuple[str, str]]) -> None:
    """Raise :class:`RenamedKeyError` for an old key that a config file put in ``cfg``."""
    renames = tuple(renames)
    tree = OmegaConf.to_container(cfg, resolve=False)
    tree.pop("hydra", None)
    for key in _keys(tree):
        new = _renamed(key, renames)
        if new is not None:
            raise RenamedKeyError(_message(key, new))


def run_checked(hydra_main: Callable[[], T], renames: Iterable[tuple[str, str]]) -> T:
    """Run a Hydra entry point after checking the command line for old keys: one error line
    (``error: config key ... was renamed ...``) and exit status 1 instead of Hydra's message."""
    try:
        check_overrides(sys.argv[1:], renames)
    except RenamedKeyError as e:
        raise SystemExit(f"error: {e}") from None
    return hydra_main()
