"""Check the values of a composed config before anything runs, naming the key of a bad one.

Hydra and OmegaConf accept ``trainer.max_steps=abc`` (a string) and ``data.global_batch_size=-3``;
without a check the run would start, create its directory and die deep inside Lightning
(``'<' not supported between instances of 'str' and 'int'``). :func:`check_values` raises
:class:`~heartgpt.errors.ConfigError` ``"<key>: <problem>"`` instead, for every key of
:data:`CHECKS` the config holds (keys it does not hold are not its business: ``eval`` and
``predict`` compose other trees).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from heartgpt.errors import ConfigError
from heartgpt.heads.registry import head_kinds, head_losses, head_poolings, head_targets
from heartgpt.model.checkpoint_format import CONFIG_LIMITS

Check = Callable[[Any], str | None]  # the problem with a value, or None
_ABSENT = object()


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and v == v and abs(v) != float("inf")


def integer(lo: int | None = None, hi: int | None = None, nullable: bool = False) -> Check:
    """An integer in [lo, hi]."""
    def check(v: Any) -> str | None:
        if v is None and nullable:
            return None
        if not _is_int(v):
            return f"{v!r} is not an integer"
        if lo is not None and hi is not None and not lo <= v <= hi:
            return f"{v} is outside [{lo}, {hi}]"
        if lo is not None and v < lo:
            return f"{v} must be >= {lo}"
        if hi is not None and v > hi:
            return f"{v} must be <= {hi}"
        return None
    return check


def number(lo: float | None = None, hi: float | None = None, *, open_lo: bool = False,
           open_hi: bool = False, nullable: bool = False) -> Check:
    """A finite number in [lo, hi] (``open_lo``/``open_hi``: the bound itself excluded)."""
    def check(v: Any) -> str | None:
        if v is None and nullable:
            return None
        if not _is_number(v):
            return f"{v!r} is not a finite number"
        if lo is not None and (v < lo or (open_lo and v == lo)):
            return f"{v} must be {'>' if open_lo else '>='} {lo}"
        if hi is not None and (v > hi or (open_hi and v == hi)):
            return f"{v} must be {'<' if open_hi else '<='} {hi}"
        return None
    return check


def one_of(*choices: Any) -> Check:
    def check(v: Any) -> str | None:
        return None if v in choices else f"{v!r} is not one of {list(choices)}"
    return check


def registered(choices: Callable[[], tuple[Any, ...]], *also: Any) -> Check:
    """One of ``choices()`` (or ``also``), read when a value is checked: the head registry's
    vocabulary (:mod:`heartgpt.heads.registry`) grows with the kinds registered."""
    def check(v: Any) -> str | None:
        return one_of(*also, *choices())(v)
    return check


def batches_or_fraction(v: Any) -> str | None:
    """Lightning's limit_*_batches / val_check_interval: a count >= 0 or a fraction in [0, 1]."""
    if _is_int(v):
        return None if v >= 0 else f"{v} must be >= 0"
    if _is_number(v):
        return None if 0 <= v <= 1 else f"{v} must be a count or a fraction in [0, 1]"
    return f"{v!r} is not a number of batches or a fraction"


def devices(v: Any) -> str | None:
    """'auto', -1 (all), a positive count, or a list of device indices."""
    if v == "auto" or (_is_int(v) and (v == -1 or v > 0)):
        return None
    if isinstance(v, str) and v.replace(",", "").strip().isdigit():
        return None  # Lightning's "0,1"
    if isinstance(v, (list, tuple)) and v and all(_is_int(d) and d >= 0 for d in v):
        return None
    return f"{v!r} is not 'auto', -1, a positive count or a list of device indices"


def workers(v: Any) -> str | None:
    """A process count >= 0, or 'auto' (the CPUs this process may use)."""
    if v == "auto" or (_is_int(v) and v >= 0):
        return None
    return f"{v!r} is not an integer >= 0 or 'auto'"


def betas(v: Any) -> str | None:
    if (isinstance(v, (list, tuple)) and len(v) == 2
            and all(_is_number(b) and 0 <= b < 1 for b in v)):
        return None
    return f"{v!r} is not two numbers in [0, 1)"


PRECISIONS = ("32-true", "32", 32, "16-mixed", "bf16-mixed", "bf16-true", "16-true",
              "64-true", "64", 64, "transformer-engine")

CHECKS: dict[str, Check] = {
    "seed": integer(0),
    "test_checkpoint": one_of("best", "last"),
    "float32_matmul_precision": one_of("highest", "high", "medium"),
    "trainer.max_steps": integer(-1),
    "trainer.max_epochs": integer(-1, nullable=True),
    "trainer.val_check_interval": batches_or_fraction,
    "trainer.check_val_every_n_epoch": integer(1, nullable=True),
    "trainer.limit_train_batches": batches_or_fraction,
    "trainer.limit_val_batches": batches_or_fraction,
    "trainer.limit_test_batches": batches_or_fraction,
    "trainer.log_every_n_steps": integer(1),
    "trainer.gradient_clip_val": number(0, nullable=True),
    "trainer.accumulate_grad_batches": integer(1),
    "trainer.precision": one_of(*PRECISIONS),
    "trainer.devices": devices,
    "trainer.num_nodes": integer(1),
    "data.global_batch_size": integer(1),
    "data.micro_batch_size": integer(1, nullable=True),
    "data.num_workers": integer(0),
    "data.val_fraction": number(0, 1, open_hi=True),
    "data.test_fraction": number(0, 1, open_hi=True),
    "data.windows_per_segment": integer(1),
    "data.prefetch_factor": integer(1, nullable=True),
    # the sizes a stored model config may have (a vocabulary of one token predicts nothing)
    **{f"model.{key}": integer(2 if key == "vocab_size" else 1, limit)
       for key, limit in CONFIG_LIMITS.items()},
    "model.dropout": number(0, 1, open_hi=True),
    "module.lr": number(0, open_lo=True),
    "module.weight_decay": number(0),
    "module.decay_params": one_of("linear", "all"),
    "module.warmup_steps": integer(0),
    "module.min_lr_ratio": number(0, 1),
    "module.betas": betas,
    "module.head.pos_weight": number(0, open_lo=True, nullable=True),
    "module.head.kind": registered(head_kinds),
    "module.head.outputs": integer(1),
    "module.head.pooling": registered(head_poolings),
    "module.head.stride": integer(1),
    "module.head.target": registered(head_targets),
    "module.head.loss": registered(head_losses, None),
    "sample_rate": number(0, open_lo=True, nullable=True),
    "batch_size": integer(1),
    "rows_per_shard": integer(1),
    "num_workers": integer(0),
    "csv_decimal": one_of(".", ","),
    "filter.low_hz": number(0, open_lo=True, nullable=True),
    "filter.high_hz": number(0, open_lo=True, nullable=True),
    "filter.order": integer(1, 16),
    "segment.samples": integer(1),
    "segment.seconds": number(0, open_lo=True, nullable=True),
    "segment.stride_samples": integer(1, nullable=True),
    "segment.stride_seconds": number(0, open_lo=True, nullable=True),
    "segment.max_per_record": integer(1, nullable=True),
}


# Keys whose meaning depends on the command (``format`` is a recording format here, an export
# format in ``heartgpt.export``): added by the command that has them.
RECORDING_FORMATS = ("auto", "csv", "npy", "mat", "wfdb", "edf")
PREPARE_CHECKS: dict[str, Check] = {
    "format": one_of(*RECORDING_FORMATS),
    "label_kind": one_of("unlabelled", "sequence", "token"),
    "source": one_of("files", "demo"),
    "num_workers": workers,  # prepare's may be 'auto' (predict's is a count: CHECKS)
    "nparts": integer(1),
    "part": integer(0, nullable=True),
    "resume": one_of(True, False),
    "merge": one_of(True, False),
}
PREDICT_CHECKS: dict[str, Check] = {"format": one_of(*RECORDING_FORMATS)}


CHECKPOINT_WANTED = ("<file>, one of our .ckpt, a .safetensors export or a released .zip/.pth "
                     "(a bare name is looked up in paths.weights_dir)")


def require_given(cfg: DictConfig, key: str, wanted: str) -> None:
    """Raise :class:`ConfigError` ``"<key>: not given: <key>=<wanted>"`` when the required
    (``???``) ``key`` was not set."""
    if OmegaConf.is_missing(cfg, key):
        raise ConfigError(key, f"not given: {key}={wanted}")


def _value(cfg: DictConfig, key: str) -> Any:
    try:
        return OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False)
    except OmegaConfBaseException as e:  # an interpolation that cannot be resolved
        raise ConfigError(key, " ".join(str(e).split())) from None


def check_values(cfg: DictConfig, extra: dict[str, Check] | None = None) -> None:
    """Raise :class:`ConfigError` ``"<key>: <problem>"`` for the first bad value in ``cfg``
    (:data:`CHECKS` and the command's ``extra`` checks)."""
    for key, check in {**CHECKS, **(extra or {})}.items():
        value = _value(cfg, key)
        if value is _ABSENT:
            continue
        if isinstance(value, DictConfig) or OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=True)
        problem = check(value)
        if problem:
            raise ConfigError(key, problem)
    embd, heads = _value(cfg, "model.n_embd"), _value(cfg, "model.n_head")
    if _is_int(embd) and _is_int(heads) and embd % heads:
        raise ConfigError("model", f"n_embd={embd} is not divisible by n_head={heads}")
    low, high = _value(cfg, "filter.low_hz"), _value(cfg, "filter.high_hz")
    if _is_number(low) and _is_number(high) and low >= high:
        raise ConfigError("filter", f"low_hz={low} must be below high_hz={high}")
