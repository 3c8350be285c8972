"""The ground floor of heartgpt's errors: :class:`UserError`, the base of every failure a user
can fix (its subclasses live with the code that raises them, e.g. ``data.shards.ShardError``);
:class:`InputError`, one line ``<file>: <problem>``; and :func:`one_line_errors`, which ends every
entry point's known failures with that one line. Imports no other heartgpt module."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class UserError(ValueError):
    """A failure the user can fix (bad data, checkpoint or config value), not a bug: entry points
    show it as one error line without a traceback (:func:`known_failure`)."""


class InputError(UserError):
    """An input (a recording, a checkpoint, an option) cannot be used.

    ``str()`` is ``"<source>: <problem>"``: the command-line tools print it as their one error
    line, and ``prepare`` reports it as the reason a record was skipped.
    """

    def __init__(self, source: str | os.PathLike, problem: str) -> None:
        self.source, self.problem = str(source), problem
        super().__init__(f"{source}: {problem}")


def error_line(e: BaseException) -> str:
    """The one-line message of an input error: ``<file>: <problem>``."""
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        text = f"{e.filename}: {e.strerror}"
    else:
        text = str(e) or type(e).__name__
    return " ".join(text.split())


@contextmanager
def about(source: str | os.PathLike) -> Iterator[None]:
    """Re-raise a plain ``ValueError`` from the block as a :class:`InputError` naming ``source``."""
    try:
        yield
    except InputError:
        raise
    except ValueError as e:
        raise InputError(source, str(e)) from None


class ConfigError(InputError):
    """A config value cannot be used: ``str()`` is ``"<dotted key>: <problem>"``."""


def _known_errors() -> tuple[type[BaseException], ...]:
    """The failures a user can fix (bad data, checkpoint, config value): shown as one line."""
    from omegaconf.errors import OmegaConfBaseException

    return (UserError, FileNotFoundError, OmegaConfBaseException)


def known_failure(e: BaseException) -> str | None:
    """The one-line message of a failure the user can fix, or None for anything else (a bug).

    Hydra's ``instantiate`` wraps what a constructor raises: a ``ValueError`` (or a known
    failure) raised there is a bad value under that config node, named by its key.
    """
    from hydra.errors import ConfigCompositionException, InstantiationException

    known = _known_errors()
    if isinstance(e, InstantiationException):
        cause = e.__cause__ or e.__context__
        if isinstance(cause, (*known, ValueError, TypeError)):
            key = re.search(r"full_key: (\S+)", str(e))
            text = error_line(cause)
            if isinstance(cause, known) or key is None:
                return text
            return f"{key.group(1)}: {type(cause).__name__ if not str(cause) else text}"
        return None
    if isinstance(e, (*known, ConfigCompositionException)):  # composing: an unknown override
        return error_line(e)
    return None


def show_tracebacks() -> bool:
    """Whether to re-raise known failures with their traceback (``HYDRA_FULL_ERROR=1``)."""
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


@contextmanager
def one_line_errors(run_dir: str | os.PathLike | None = None,
                    root: str | os.PathLike | None = None) -> Iterator[None]:
    """End a known failure of the block (:func:`known_failure`) with ``error: <what>: <problem>``
    and exit status 1, without a traceback (``HYDRA_FULL_ERROR=1`` keeps it). A ``run_dir``
    that holds nothing but the scaffold of a run that never started is removed, with the
    folders between it and ``root`` that this leaves empty (:func:`remove_unstarted_run`)."""
    try:
        yield
    except Exception as e:
        message = known_failure(e)
        if message is None or show_tracebacks():
            raise
        if run_dir is not None:
            remove_unstarted_run(run_dir, root)
        raise SystemExit(f"error: {message}") from None


# What a run directory holds before training wrote anything: Hydra's config copy, the log,
# the resolved config and a W&B run directory without a step.
RUN_SCAFFOLD = frozenset({".hydra", "config.yaml", "wandb", "wandb_run_id", "csv",
                          "lightning_logs"})


def remove_unstarted_run(run_dir: str | os.PathLike, root: str | os.PathLike | None = None
                         ) -> bool:
    """Delete ``run_dir`` when it holds only :data:`RUN_SCAFFOLD` entries and ``*.log`` files
    (no checkpoint, no metrics: the run never started); returns whether it did. The folders
    between it and ``root`` (``paths.log_dir``: e.g. Hydra's ``<run_name>/runs/``) go too when
    that leaves them empty; ``root`` itself and anything outside it stay."""
    import shutil

    path = Path(run_dir)
    if not path.is_dir():
        return False
    if any(p.name not in RUN_SCAFFOLD and p.suffix != ".log" for p in path.iterdir()):
        return False
    shutil.rmtree(path, ignore_errors=True)
    if root is not None:
        top = Path(root).resolve()
        folder = path.resolve().parent
        while folder != top and folder.is_relative_to(top):
            try:
                folder.rmdir()  # only when empty
            except OSError:
                break
            folder = folder.parent
    return True
