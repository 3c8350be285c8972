"""``python -m heartgpt.app [FOLDER ...]``: the browser app on http://127.0.0.1:7860.

Without a FOLDER it looks for checkpoints in ``$HEARTGPT_WEIGHTS``, ``./weights`` and
``./outputs`` (those that exist)."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys

APP_EXTRA = "app"  # pyproject.toml's optional dependencies of the app (gradio)
MISSING_EXTRA = (f"error: the browser app needs gradio, which a plain install leaves out: "
                 f"pip install 'heartgpt[{APP_EXTRA}]' (from a clone: pip install -e '.[{APP_EXTRA}]')")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m heartgpt.app",
        description="HeartGPT in the browser: generation, attention, vector similarity, AF "
                    "screening and beat detection, one tab each. Runs offline.")
    p.add_argument("folders", nargs="*", metavar="FOLDER",
                   help="folders searched (recursively) for checkpoints: released .zip/.pth, "
                        ".ckpt, .safetensors (default: $HEARTGPT_WEIGHTS when set, ./weights "
                        "and ./outputs, those that exist)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--max-file-size", default="1gb", help="largest upload accepted (1gb)")
    p.add_argument("--open", action="store_true", help="open the page in a browser")
    return p


def main(argv: list[str] | None = None) -> int:
    """Serve until Ctrl-C / SIGTERM; returns the exit status."""
    args = build_parser().parse_args(argv)
    # found, not imported: gradio reads $GRADIO_TEMP_DIR when imported, and serve() sets it
    # first (to the app's own temporary folder, removed at exit)
    if importlib.util.find_spec("gradio") is None:  # the optional extra
        print(MISSING_EXTRA, file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up probes
    from heartgpt.app.server import serve

    try:
        serve(args.folders, args.host, args.port, args.max_file_size, args.open)
    except OSError as e:  # a missing checkpoint folder, a port in use
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
