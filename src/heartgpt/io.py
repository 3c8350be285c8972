"""Inputs of the per-file tools (generate, screen_af, detect_beats, interpret).

One signal per file: :func:`read_signal` reads a CSV / .txt (one column or one row, an
optional header line) or a .npy array into float64 samples and raises :class:`ToolError`
("<file>: <problem>") on anything it cannot use. :func:`load_tool_model` loads a checkpoint
and checks it is the right kind for the tool and the recording's modality, and
:func:`run_tool` turns those errors into the one-line ``error: <file>: <problem>`` the CLIs
print. :func:`add_io_arguments` gives every tool the same ``--checkpoint`` and ``--out-dir``
options: results go to ``outputs/<tool>/`` under the current folder unless ``--out-dir`` says
otherwise. The fuller readers for data preparation live in :mod:`heartgpt.data.readers`.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from heartgpt.checkpoints import WEIGHTS_ENV, CheckpointError, LoadedModel, load_model
from heartgpt.model import GPT
from heartgpt.tokenizer import LEVELS, Modality, get_modality

TEXT_SUFFIXES = (".csv", ".txt", ".tsv", "")
OUTPUTS_DIR = "outputs"  # <cwd>/outputs: the tools' results (<tool>/) and training runs
_DELIMITED = re.compile(r"[,;]")


class ToolError(ValueError):
    """A tool cannot use its input; ``str()`` is ``"<file>: <problem>"``."""

    def __init__(self, source: str | os.PathLike, problem: str) -> None:
        self.source, self.problem = str(source), problem
        super().__init__(f"{source}: {problem}")


def _parse_text(path: Path) -> np.ndarray:
    """Numbers of a delimited text file as a 2-D float64 array (rows, columns)."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise ToolError(path, "not a text file (cannot decode as UTF-8)") from None
    rows: list[list[float]] = []
    header_seen = False
    blanks = 0  # empty lines since the last row: missing samples if more data follows
    for lineno, line in enumerate(lines, start=1):
        line = line.strip()
        if line.startswith("#"):
            continue
        if not line:
            blanks += 1
            continue
        if "," in line or ";" in line:
            cells = [c.strip() for c in _DELIMITED.split(line)]
        else:
            cells = line.split()
        try:
            values = [float(c) if c else float("nan") for c in cells]  # empty cell: NaN
        except ValueError:
            if not rows and not header_seen:  # a header line before any numbers
                header_seen = True
                continue
            bad = next(c for c in cells if c and not _is_float(c))
            raise ToolError(path, f"line {lineno}: not a number: {bad[:40]!r}") from None
        if rows and len(values) != len(rows[0]):
            raise ToolError(path, f"line {lineno}: {len(values)} values, expected {len(rows[0])}")
        if rows and blanks:
            rows.extend([[float("nan")] * len(values)] * blanks)
        blanks = 0
        rows.append(values)
    if not rows:
        return np.zeros((0, 1))
    return np.asarray(rows, dtype=np.float64)


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_signal(path: str | os.PathLike, *, allow_nan: bool = False) -> np.ndarray:
    """Read one signal from a ``.csv``/``.txt`` (one column or one row) or ``.npy`` file.

    A first line that is not numeric is taken as a header and skipped. Empty cells, and empty
    lines between samples, read as NaN (missing samples); leading/trailing empty lines and
    ``#`` comment lines are ignored.

    Args:
        path: the file.
        allow_nan: keep NaN/inf samples (tools that skip unusable windows); otherwise they
            are an error naming their count and the first index.

    Returns:
        (n,) float64 samples.

    Raises:
        ToolError: missing file, unsupported type, not numeric, several channels, empty, NaNs.
    """
    path = Path(path)
    if not path.exists():
        raise ToolError(path, "no such file")
    if path.is_dir():
        raise ToolError(path, "is a directory, expected a signal file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except Exception as e:  # numpy raises ValueError/OSError/EOFError depending on damage
            raise ToolError(path, f"cannot read as a NumPy .npy file ({e})") from None
    elif suffix in TEXT_SUFFIXES:
        arr = _parse_text(path)
    else:
        raise ToolError(path, f"unsupported file type {suffix!r} (expected .csv, .txt or .npy)")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise ToolError(path, f"not a numeric signal (dtype {arr.dtype})")
    if arr.ndim == 2 and 1 in arr.shape:
        arr = arr.reshape(-1)
    if arr.ndim != 1:
        raise ToolError(path, f"expected one channel (one column or one row), got shape "
                              f"{arr.shape}")
    x = arr.astype(np.float64)
    if x.size == 0:
        raise ToolError(path, "empty signal: no samples")
    bad = ~np.isfinite(x)
    if bad.any() and not allow_nan:
        raise ToolError(path, f"{int(bad.sum())} NaN/inf sample(s), first at index "
                              f"{int(np.argmax(bad))}")
    return x


def resolve_modality(loaded: LoadedModel, stated: str | None) -> Modality:
    """The modality the tool works in: the checkpoint's, which ``stated`` must agree with."""
    if stated is not None:
        try:
            mod = get_modality(stated)
        except ValueError as e:
            raise ToolError(loaded.source, str(e)) from None
        if loaded.modality is not None and loaded.modality != mod.name:
            raise ToolError(loaded.source, f"checkpoint is for {loaded.modality.upper()} but "
                                           f"--modality says {mod.name.upper()}")
    elif loaded.modality is not None:
        mod = get_modality(loaded.modality)
    else:
        raise ToolError(loaded.source, "checkpoint does not say its modality; pass --modality "
                                       "ecg or ppg")
    if loaded.model.config.vocab_size <= LEVELS:
        raise ToolError(loaded.source, f"vocab size {loaded.model.config.vocab_size} cannot hold "
                                       f"tokens 0..{LEVELS}")
    return mod


def load_tool_model(
    path: str | os.PathLike,
    need: str,
    modality: str | None = None,
    refuse_task: str | None = None,
    device: str = "cpu",
) -> tuple[LoadedModel, Modality]:
    """Load a checkpoint for a tool and check it fits.

    Args:
        path: anything :func:`heartgpt.checkpoints.load_model` loads.
        need: ``"lm"`` (a pre-trained next-token model), ``"binary"`` (a 1-output fine-tune)
            or ``"any"``.
        modality: the user's statement ('ecg'/'ppg'); must agree with the checkpoint.
        refuse_task: a fine-tune task this tool cannot use (e.g. 'beats' for AF screening).
        device: where to put the model.
    """
    if need not in ("lm", "binary", "any"):
        raise ValueError(f"need must be 'lm', 'binary' or 'any', got {need!r}")
    loaded = load_model(path)
    out = loaded.model.config.out_features
    if need == "lm" and out is not None:
        raise ToolError(path, f"is a fine-tuned model ({out} output, task {loaded.task!r}); "
                              "this tool needs a pre-trained language model")
    if need == "binary" and out != 1:
        kind = "a pre-trained language model" if out is None else f"a {out}-output model"
        raise ToolError(path, f"is {kind}; this tool needs a fine-tuned 1-output model")
    if refuse_task is not None and loaded.task == refuse_task:
        raise ToolError(path, f"is fine-tuned for task {refuse_task!r}, not for this tool")
    mod = resolve_modality(loaded, modality)
    loaded.model.to(device).eval()
    return loaded, mod


@contextmanager
def eval_mode(model: GPT) -> Iterator[GPT]:
    """Eval mode and no gradients for the block; restores the previous mode (for callbacks)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def model_device(model: GPT) -> torch.device:
    return next(model.parameters()).device


def error_line(e: BaseException) -> str:
    """The one-line message of an input error: ``<file>: <problem>``."""
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        text = f"{e.filename}: {e.strerror}"
    else:
        text = str(e) or type(e).__name__
    return " ".join(text.split())


def run_tool(body: Callable[[], None]) -> int:
    """Run a CLI body; print ``error: <file>: <problem>`` and return 1 on bad input."""
    import matplotlib

    matplotlib.use("Agg")  # a CLI never opens windows
    try:
        body()
    except (ToolError, CheckpointError, OSError, ValueError) as e:
        print(f"error: {error_line(e)}", file=sys.stderr)
        return 1
    return 0


@contextmanager
def about(source: str | os.PathLike) -> Iterator[None]:
    """Re-raise a plain ``ValueError`` from the block as a :class:`ToolError` naming ``source``."""
    try:
        yield
    except (ToolError, CheckpointError):
        raise
    except ValueError as e:
        raise ToolError(source, str(e)) from None


def output_path(out_dir: str | os.PathLike, input_path: str | os.PathLike, suffix: str) -> Path:
    """``<out_dir>/<input stem><suffix>``, creating ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out / f"{Path(input_path).stem}{suffix}"


def default_out_dir(tool: str) -> Path:
    """Where ``tool`` writes without ``--out-dir``: ``outputs/<tool>`` (relative to the
    current folder, created on the first write)."""
    return Path(OUTPUTS_DIR) / tool


def _number(kind: type, test: Callable[[float], bool], what: str) -> Callable[[str], float]:
    """An argparse ``type``: ``kind(text)`` when ``test`` holds, else a usage error saying
    ``what`` the value must be (argparse prints it with the option's name, exit status 2)."""
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not (np.isfinite(value) and test(value)):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value

    parse.__name__ = what  # argparse names the type in its messages
    return parse


positive_int = _number(int, lambda v: v > 0, "a positive integer")
positive_float = _number(float, lambda v: v > 0, "a positive number")
non_negative_float = _number(float, lambda v: v >= 0, "a number >= 0")
probability = _number(float, lambda v: 0 <= v <= 1, "a probability in [0, 1]")


def add_io_arguments(parser: argparse.ArgumentParser, tool: str, checkpoint: str) -> None:
    """The ``--checkpoint/-c`` (described as ``checkpoint``) and ``--out-dir/-o`` options of
    ``tool``; ``--out-dir`` defaults to :func:`default_out_dir`."""
    parser.add_argument(
        "--checkpoint", "-c", required=True,
        help=f"{checkpoint}: a path (released .zip/.pth, .safetensors, .ckpt) or a bare released "
             f"name such as PPGPT_500k_iters.zip, looked up in ${WEIGHTS_ENV} and ./weights")
    out = default_out_dir(tool).as_posix()
    parser.add_argument("--out-dir", "-o", default=out,
                        help=f"output folder, created when needed (default: {out}/ under the "
                             "current folder)")
