"""HeartGPT in the browser (Gradio): ``python -m heartgpt.app [FOLDER ...]``.

One tab per tool -- generation, attention, vector similarity (homonyms), AF screening with the
attention shift, beat detection -- each taking an uploaded recording or a bundled synthetic
demo, a checkpoint found under the folders given on the command line (by default
``$HEARTGPT_WEIGHTS``, ``./weights`` and ``./outputs``), and a sampling rate, and offering
its figures and results for download. Every tab's work is a plain function of :mod:`heartgpt`'s
tools (``*_run`` in ``*_tab.py``), so it is tested without a browser too.

Modules: :mod:`~heartgpt.app.server` (offline launch, temporary files), :mod:`~.ui` (the
page), :mod:`~.tabs` (what every tab shares: layout and run handler), :mod:`~.inputs` (the
shared controls), :mod:`~.catalog` (checkpoints), :mod:`~.demos` (synthetic signals),
:mod:`~.session` (per-session files), :mod:`~.results` (status and error messages),
:mod:`~.background` (a library call's progress reports streamed to the page).
"""
