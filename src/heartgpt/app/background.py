"""Run a library call that reports through a callback on a worker thread, and hand its reports
to a Gradio generator as they come (how the plot of a generation grows while it samples)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator
from typing import TypeVar

R = TypeVar("R")


class Stopped(Exception):
    """Raised by ``report`` once nobody reads the reports: it ends the work early."""


def in_background(work: Callable[[Callable[..., None]], R]) -> Generator[tuple, None, R]:
    """Run ``work(report)`` on a daemon thread; yield the arguments of each ``report(...)``
    call as it happens and return what ``work`` returns (or raise what it raised).

    Closing the generator early (the browser left) makes the next ``report`` raise
    :class:`Stopped`, so the work ends at its next report instead of running on.
    """
    messages: queue.Queue[tuple[str, object]] = queue.Queue()
    stop = threading.Event()

    def report(*args: object) -> None:
        if stop.is_set():
            raise Stopped
        messages.put(("report", args))

    def run() -> None:
        try:
            messages.put(("done", work(report)))
        except BaseException as e:  # handed to the reader, which raises it
            messages.put(("failed", e))

    threading.Thread(target=run, name="heartgpt-app-work", daemon=True).start()
    try:
        while True:
            kind, value = messages.get()
            if kind == "report":
                yield value
            elif kind == "done":
                return value
            else:
                raise value
    finally:
        stop.set()
