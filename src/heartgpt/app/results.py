"""What a run shows: a status line (results or the error), figures and files to download."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import gradio as gr

from heartgpt.errors import InputError, error_line
from heartgpt.model.checkpoint_format import CheckpointError

log = logging.getLogger(__name__)

# Bad input, a bad checkpoint, a file that vanished: the user can fix these.
USER_ERRORS = (InputError, CheckpointError, OSError, ValueError)
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]<>#|~])")


def escape(text: str) -> str:
    """``text`` shown literally in Markdown."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


def error_status(e: BaseException) -> str:
    """The status Markdown of a failed run; unexpected errors are logged with a traceback."""
    if isinstance(e, USER_ERRORS):
        return f"**Error:** {escape(error_line(e))}"
    log.error("unexpected error in a run", exc_info=e)
    return (f"**Error:** unexpected {type(e).__name__}: {escape(error_line(e))} "
            "(the server log has the details)")


def shown(outputs: tuple) -> tuple:
    """Outputs for Gradio: paths as strings, in lists as in tuples."""

    def one(x: object) -> object:
        if isinstance(x, Path):
            return str(x)
        if isinstance(x, list):
            return [one(v) for v in x]
        return x

    return tuple(one(x) for x in outputs)


def figure_output(label: str, elem_id: str) -> gr.Image:
    """A PNG figure with download and full-screen buttons (no 'share': nothing leaves this
    machine); the figure's own title says what it is, so no label on top of it."""
    return gr.Image(label=label, show_label=False, type="filepath", format="png",
                    interactive=False, buttons=["download", "fullscreen"], elem_id=elem_id)


def files_output(label: str, elem_id: str) -> gr.File:
    """The files of a run, each with a download link."""
    return gr.File(label=label, file_count="multiple", interactive=False, elem_id=elem_id)
