"""Per-session temporary files: nothing a user uploads or makes outlives their session.

The app keeps every file under one root folder, made at start-up and removed at exit; Gradio
is pointed at it too (``GRADIO_TEMP_DIR``), so uploads land there and result files written
there are served in place rather than copied. Each browser session gets
``<root>/sessions/<session hash>/``; a tool's run writes into a fresh sub-folder and removes
that tool's previous run. When the browser tab closes, Gradio's ``unload`` event calls
:meth:`Sessions.end`, which deletes the session's folder and the files it uploaded.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path

log = logging.getLogger(__name__)


class Sessions:
    """The app's temporary root and what each session has put in it."""

    def __init__(self, parent: str | os.PathLike | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="heartgpt-app-", dir=parent)).resolve()
        self._lock = threading.Lock()
        self._uploads: dict[str, set[Path]] = {}
        self._runs: dict[tuple[str, str], Path] = {}
        self._counter = itertools.count()

    def session_dir(self, session: str) -> Path:
        """``<root>/sessions/<session>`` (the id is Gradio's random session hash)."""
        if not session or "/" in session or session.startswith("."):
            raise ValueError(f"bad session id {session!r}")
        return self.root / "sessions" / session

    def run_dir(self, session: str, tool: str) -> Path:
        """A new empty folder for one run of ``tool``; the tool's previous run is removed."""
        path = self.session_dir(session) / f"{tool}-{next(self._counter)}"
        path.mkdir(parents=True)
        with self._lock:
            old = self._runs.get((session, tool))
            self._runs[(session, tool)] = path
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return path

    def track_upload(self, session: str, path: str | os.PathLike | None) -> None:
        """Remember an uploaded file (inside the root) so :meth:`end` deletes it."""
        if not path:
            return
        p = Path(path).resolve()
        if p.is_relative_to(self.root):
            with self._lock:
                self._uploads.setdefault(session, set()).add(p)

    def end(self, session: str) -> None:
        """Delete everything of ``session``: its runs and its uploads."""
        with self._lock:
            uploads = self._uploads.pop(session, set())
            # Gradio names an upload by its content: another session may hold the same file
            uploads -= set().union(*self._uploads.values())
            for key in [k for k in self._runs if k[0] == session]:
                del self._runs[key]
        shutil.rmtree(self.session_dir(session), ignore_errors=True)
        for p in uploads:
            p.unlink(missing_ok=True)
            try:  # Gradio puts each upload in its own folder
                if p.parent != self.root:
                    p.parent.rmdir()
            except OSError:
                pass
        log.info("session %s ended: removed its files", session)

    def close(self) -> None:
        """Remove the whole root (app exit)."""
        shutil.rmtree(self.root, ignore_errors=True)
