"""The app's page: one tab per tool, and the session clean-up on tab close."""

from __future__ import annotations

import gradio as gr

from heartgpt.app import (
    af_tab,
    apply_tab,
    attention_tab,
    beats_tab,
    generate_tab,
    homonyms_tab,
)
from heartgpt.app.context import AppContext

# Gradio's own sweep of its cache (every 30 min, files older than 4 h): a back-stop for
# sessions whose browser vanished without an unload event.
DELETE_CACHE = (1800, 4 * 3600)


def _intro(ctx: AppContext) -> str:
    where = (", ".join(f"`{f}`" for f in ctx.folders)
             or "no folder (none of `$HEARTGPT_WEIGHTS`, `./weights`, `./outputs` exists)")
    if not ctx.checkpoints:
        return (f"**No checkpoints found** in {where}. Start the app with a folder of weights, "
                "`python -m heartgpt.app path/to/weights`, or set `$HEARTGPT_WEIGHTS` to the "
                "folder of the released files.")
    return (f"{len(ctx.checkpoints)} checkpoint(s) from {where}. Upload a recording or pick a "
            "synthetic demo signal in each tab. Files you upload or make are deleted when you "
            "close this page.")


def build_app(ctx: AppContext) -> gr.Blocks:
    """The Blocks of the app (not launched)."""
    with gr.Blocks(title="HeartGPT", analytics_enabled=False, delete_cache=DELETE_CACHE) as app:
        gr.Markdown(f"## HeartGPT\n{_intro(ctx)}", elem_id="intro")
        with gr.Tabs():
            generate_tab.build(ctx)
            attention_tab.build(ctx)
            homonyms_tab.build(ctx)
            af_tab.build(ctx)
            beats_tab.build(ctx)
            apply_tab.build(ctx)
        app.unload(ctx.end_session)
    return app
