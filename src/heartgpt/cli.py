"""What the per-file tools (generate, screen_af, detect_beats, interpret) share on the command
line: one argparse parent, option types that check their values, and one-line errors.

:func:`tool_arguments` gives every tool the same recording, ``--checkpoint``, ``--out-dir``,
``--sample-rate``, ``--modality`` and ``--device`` options: results go to ``outputs/<tool>/``
under the current folder unless ``--out-dir`` says otherwise. :func:`run_tool` turns input
errors into the one line ``error: <file>: <problem>`` and exit status 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from heartgpt.data.text_tables import DECIMALS
from heartgpt.errors import InputError, error_line
from heartgpt.model.checkpoints import WEIGHTS_ENV

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from heartgpt.data.tokenizer import Modality

OUTPUTS_DIR = "outputs"  # <cwd>/outputs: the tools' results (<tool>/) and training runs
RECORDING_HELP = "recording (.csv / .txt one column, or .npy)"


def run_tool(body: Callable[[], None]) -> int:
    """Run a CLI body; print ``error: <file>: <problem>`` and return 1 on bad input."""
    import matplotlib

    matplotlib.use("Agg")  # a CLI never opens windows
    try:
        body()
    except (InputError, OSError, ValueError) as e:
        print(f"error: {error_line(e)}", file=sys.stderr)
        return 1
    return 0


def add_plot_window(p: argparse.ArgumentParser) -> None:
    """``--plot-start`` / ``--plot-seconds``: the part of the recording the PNG shows in
    detail (over a minute: the zoom below the overview)."""
    p.add_argument("--plot-start", type=non_negative_float, default=0.0,
                   help="plot from this second (0)")
    p.add_argument("--plot-seconds", type=non_negative_float, default=30.0,
                   help="seconds shown in detail (30; 0: all, or over a minute an overview "
                        "and the first 30 s)")


def check_plot_start(recording: str | os.PathLike, plot_start: float, n_samples: int,
                     rate: float) -> None:
    """Refuse a ``--plot-start`` at or past the end of the recording (an empty figure)."""
    if plot_start >= n_samples / rate:
        raise InputError(recording, f"--plot-start {plot_start:g} s is past the end of the "
                                    f"recording ({n_samples / rate:g} s at {rate:g} Hz)")


def save_plot(path: str | os.PathLike, draw: Callable[[], Figure]) -> Path:
    """Draw a figure and save it as ``path`` (PNG); a failure of either names the file.

    Raises:
        InputError: ``<path>: cannot draw the figure: <problem>`` for a ``ValueError``,
            ``OverflowError`` or ``RuntimeError`` of matplotlib (e.g. limits that are not finite).
    """
    from heartgpt.inference.plots import save_figure

    try:
        return save_figure(draw(), path)
    except (ValueError, OverflowError, RuntimeError) as e:
        raise InputError(path, f"cannot draw the figure: {e}") from e


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


def tool_arguments(
    tool: str, checkpoint: str, recording: str = "recording", recording_help: str = RECORDING_HELP
) -> argparse.ArgumentParser:
    """The options every tool has, as an argparse parent (``parents=[tool_arguments(...)]``).

    Args:
        tool: the tool's name: ``--out-dir`` defaults to ``outputs/<tool>``.
        checkpoint: what ``--checkpoint`` must be, e.g. "AF fine-tuned checkpoint".
        recording: the name of the positional input argument.
        recording_help: its help text.
    """
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(recording, help=recording_help)
    p.add_argument(
        "--checkpoint", "-c", required=True,
        help=f"{checkpoint}: a path (released .zip/.pth, .safetensors, .ckpt) or a bare released "
             f"name such as PPGPT_500k_iters.zip, looked up in ${WEIGHTS_ENV} and ./weights")
    out = default_out_dir(tool).as_posix()
    p.add_argument("--out-dir", "-o", default=out,
                   help=f"output folder, created when needed (default: {out}/ under the current "
                        "folder)")
    p.add_argument("--sample-rate", type=positive_float, default=None,
                   help=f"Hz of the {recording} (default: the modality rate, 100 ECG / 50 PPG)")
    p.add_argument("--modality", choices=("ecg", "ppg"), default=None,
                   help=f"modality of the {recording}; must match the checkpoint's (default: "
                        "the checkpoint's)")
    p.add_argument("--csv-decimal", choices=DECIMALS, default=".",
                   help="decimal mark of a CSV/text recording ('.'; ',' for 1,2796;2,5592)")
    p.add_argument("--channel", default=None,
                   help=f"column or signal (index or name, e.g. Pleth) of a {recording} holding "
                        "several (CSV, .npy, EDF/BDF); default: the file must hold one")
    p.add_argument("--device", default="cpu", help="torch device of the model (cpu)")
    return p


def read_tool_recording(args: argparse.Namespace, modality: Modality, recording: str = "recording",
                        allow_nan: bool = False) -> tuple[np.ndarray, float]:
    """A tool's recording (the ``recording`` argument; ``--channel`` of several) and its rate
    (the file's own for EDF/BDF, else ``--sample-rate`` or the modality's), checked for
    plausibility (:func:`heartgpt.data.plausibility.check_recording`): a recording that evidently is the other modality stops the tool unless ``--modality`` was
    given; a rhythm outside 25-250 bpm is a ``warning:`` line on stderr."""
    from heartgpt.data.plausibility import check_recording
    from heartgpt.data.readers import read_signal_and_rate

    path = getattr(args, recording)
    channel = getattr(args, "channel", None)
    if isinstance(channel, str) and channel.lstrip("-").isdigit():
        channel = int(channel)
    signal, file_rate = read_signal_and_rate(path, allow_nan=allow_nan,
                                             decimal=args.csv_decimal, channel=channel)
    rate = file_rate or args.sample_rate or modality.sample_rate  # EDF/BDF carry their rate
    if file_rate and args.sample_rate and args.sample_rate != file_rate:
        print(f"warning: {path}: the file's own rate {file_rate:g} Hz is used, not "
              f"--sample-rate {args.sample_rate:g}", file=sys.stderr)
    for warning in check_recording(path, signal, rate, modality.name,
                                   stated=args.modality is not None):
        print(f"warning: {path}: {warning}", file=sys.stderr)
    return signal, rate


def tool_parser(tool: str, checkpoint: str, description: str, **recording: str
                ) -> argparse.ArgumentParser:
    """The parser of ``python -m heartgpt.<tool>`` with :func:`tool_arguments` (``recording``:
    its ``recording``/``recording_help``), for the tool to add its own options to."""
    return argparse.ArgumentParser(prog=f"python -m heartgpt.{tool}", description=description,
                                   parents=[tool_arguments(tool, checkpoint, **recording)])
