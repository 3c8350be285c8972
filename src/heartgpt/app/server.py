"""Serve the app on this machine: offline, files in one temporary folder removed at exit."""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Sequence

# Set before Gradio is imported: no telemetry, no version check, no Hugging Face calls.
OFFLINE_ENV = {
    "GRADIO_ANALYTICS_ENABLED": "False",
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}

log = logging.getLogger("heartgpt.app")


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM ends the app like Ctrl-C: through the clean-up


def serve(folders: Sequence[str], host: str = "127.0.0.1", port: int = 7860,
          max_file_size: str = "1gb", open_browser: bool = False) -> None:
    """Find the checkpoints under ``folders`` (none: the default folders, see
    :func:`heartgpt.app.catalog.search_folders`) and serve the app until interrupted.

    Uploads and results live in a fresh folder under ``$GRADIO_TEMP_DIR`` (or the system
    temporary folder), deleted when a session ends and, whole, when the app exits.
    """
    from heartgpt.app.session import Sessions

    sessions = Sessions(os.environ.get("GRADIO_TEMP_DIR") or None)
    # Gradio reads both when imported: its uploads and cache go under our root.
    os.environ.update(OFFLINE_ENV, GRADIO_TEMP_DIR=str(sessions.root))
    signal.signal(signal.SIGTERM, _stop)
    app = None
    try:
        import matplotlib

        matplotlib.use("Agg")
        from heartgpt.app.catalog import find_checkpoints, search_folders
        from heartgpt.app.context import AppContext
        from heartgpt.app.ui import build_app

        folders = search_folders(folders)
        infos = find_checkpoints(folders)
        log.info("found %d checkpoint(s) in %s", len(infos),
                 ", ".join(map(str, folders)) or "no folder (none of the default ones exists)")
        app = build_app(AppContext(infos, sessions, [str(f) for f in folders]))
        app.queue()
        app.launch(server_name=host, server_port=port, prevent_thread_lock=True,
                   inbrowser=open_browser, share=False, ssr_mode=False, mcp_server=False,
                   run_history=False, pwa=False, enable_monitoring=False,
                   max_file_size=max_file_size, footer_links=["gradio", "settings"])
        log.info("temporary files in %s", sessions.root)
        if host not in ("127.0.0.1", "localhost", "::1"):
            log.warning("serving on %s: anyone who can reach this machine can use the app", host)
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        log.info("stopping")
    finally:
        if app is not None:
            app.close()
        sessions.close()
