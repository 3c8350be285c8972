"""What every tab needs from the running app: the checkpoints found and the sessions' files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from heartgpt.app.catalog import CheckpointInfo
from heartgpt.app.session import Sessions

# The default of a handler's ``progress`` parameter: Gradio sees it and passes a fresh tracker
# to every call.
PROGRESS = gr.Progress()


@dataclass
class AppContext:
    """The app's checkpoints (found at start-up) and its per-session temporary files."""

    checkpoints: list[CheckpointInfo]
    sessions: Sessions
    folders: list[str] = field(default_factory=list)

    @staticmethod
    def session_id(request: gr.Request | None) -> str:
        return (request.session_hash if request is not None else None) or "no-session"

    def run_dir(self, request: gr.Request | None, tool: str, upload: str | None) -> Path:
        """A fresh folder for a run of ``tool``; ``upload`` is deleted with the session."""
        session = self.session_id(request)
        self.sessions.track_upload(session, upload)
        return self.sessions.run_dir(session, tool)

    def track_upload(self, request: gr.Request | None, upload: str | None) -> None:
        self.sessions.track_upload(self.session_id(request), upload)

    def end_session(self, request: gr.Request) -> None:
        """Gradio ``unload`` listener: the browser tab closed."""
        self.sessions.end(self.session_id(request))
