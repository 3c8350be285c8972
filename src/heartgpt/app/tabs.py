"""What every tool tab shares: a description above two columns, the inputs (a signal, a
checkpoint, the tool's own options, a run button) and the results (a status line, the tool's
own outputs), and the run handler, which reads the signal, makes a fresh run folder, calls the
tool's ``*_run`` and shows its outputs or the error.

A tab module writes only what is its own::

    with tool_tab(ctx, "Attention", "attention", "att", "Attention weights ...") as tab:
        with tab.inputs(SHORT_DEMOS, "any", "checkpoint", run="Show attention"):
            layer = gr.Number(...)
        with tab.results():
            heads = figure_output(...)
    tab.connect(show, [layer], [heads], desc="tracing the model")
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import gradio as gr

from heartgpt.app.context import PROGRESS, AppContext
from heartgpt.app.inputs import (
    SignalInputs,
    checkpoint_input,
    read_input_signal,
    report_uploads,
    signal_inputs,
)
from heartgpt.app.results import error_status, shown

# run(signal, checkpoint, out_dir, *option values[, progress=]) -> (status, *outputs), or, a
# generator function, yields them
ToolRun = Callable[..., tuple | Iterator[tuple]]


@dataclass
class ToolTab:
    """One tool's tab as it is built: its controls, then its run handler."""

    ctx: AppContext
    tool: str  # the tab's id and the name of its run folders
    prefix: str  # of its elements' ids: <prefix>-file, -checkpoint, -run, -status, ...
    allow_nan: bool  # whether the tool takes NaN samples (it skips their windows)
    signal: SignalInputs = field(init=False)
    checkpoint: gr.Dropdown = field(init=False)
    button: gr.Button = field(init=False)
    status: gr.Markdown = field(init=False)

    @contextmanager
    def inputs(self, demos: list[str], role: str, label: str, *, run: str) -> Iterator[None]:
        """The inputs column: the signal controls and a drop-down of the checkpoints fit for
        ``role`` above the body (the tool's options), the ``run`` button below it."""
        with gr.Column(scale=2):
            self.signal = signal_inputs(self.prefix, demos)
            self.checkpoint = checkpoint_input(self.ctx.checkpoints, role, label,
                                               f"{self.prefix}-checkpoint")
            yield
            self.button = gr.Button(run, variant="primary", elem_id=f"{self.prefix}-run")

    @contextmanager
    def results(self) -> Iterator[None]:
        """The results column: the status line above the body (the tool's outputs)."""
        with gr.Column(scale=3):
            self.status = gr.Markdown(elem_id=f"{self.prefix}-status")
            yield

    def connect(self, run: ToolRun, options: Sequence[gr.components.Component],
                outputs: Sequence[gr.components.Component], *, desc: str,
                unit: str | None = None, **click: object) -> None:
        """Describe uploads in the status line, and make the run button call
        ``run(signal, checkpoint, out_dir, *option values)`` on the chosen signal in a fresh
        run folder, showing what it returns (each value it yields, for a generator function)
        in ``[status, *outputs]``, or the error in the status line.

        The progress bar says ``desc``; with ``unit``, ``run`` also gets ``progress=report``,
        where ``report(done, total)`` moves the bar. ``click`` goes to ``gr.Button.click``.
        """
        report_uploads(self.signal, self.status, self.allow_nan, self.ctx.track_upload)
        failed = (None,) * len(outputs)

        def start(request: gr.Request, progress: gr.Progress, values: tuple):
            file, demo, rate, modality, checkpoint, *option_values = values
            progress(0 if unit else None, desc=desc)
            signal = read_input_signal(file, demo, rate, modality, self.allow_nan)
            kwargs = {}
            if unit:
                kwargs["progress"] = lambda done, total: progress((done, total), desc=desc,
                                                                  unit=unit)
            out_dir = self.ctx.run_dir(request, self.tool, file)
            return run(signal, checkpoint, out_dir, *option_values, **kwargs)

        # Gradio passes the request and a progress tracker to the leading parameters so marked
        if inspect.isgeneratorfunction(run):
            def handler(request: gr.Request, progress=PROGRESS, *values):
                try:
                    for out in start(request, progress, values):
                        yield shown(out)
                except Exception as e:
                    yield error_status(e), *failed
        else:
            def handler(request: gr.Request, progress=PROGRESS, *values):
                try:
                    return shown(start(request, progress, values))
                except Exception as e:
                    return error_status(e), *failed

        self.button.click(handler, [*self.signal.components, self.checkpoint, *options],
                          [self.status, *outputs], **click)


@contextmanager
def tool_tab(ctx: AppContext, title: str, tool: str, prefix: str, description: str, *,
             allow_nan: bool = False) -> Iterator[ToolTab]:
    """A tab ``title`` (id ``tool``) with ``description`` (Markdown) above a row that the body
    fills with :meth:`ToolTab.inputs` and :meth:`ToolTab.results`."""
    with gr.Tab(title, id=tool):
        gr.Markdown(description)
        with gr.Row():
            yield ToolTab(ctx, tool, prefix, allow_nan)
