"""The error every user-facing input problem raises: one line, ``<file>: <problem>``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


class InputError(ValueError):
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
