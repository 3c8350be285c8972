"""Helpers shared by the benchmark scripts: child-process measurement, machine facts, output."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import platform
import resource
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

BENCH_DIR = Path(__file__).resolve().parent


def rss_mb() -> float:
    """Current resident set size of this process in MB (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(fn: Callable[..., dict], kwargs: dict, queue: mp.Queue) -> None:
    torch.set_num_threads(kwargs.pop("threads"))
    try:
        queue.put(("ok", fn(**kwargs)))
    except BaseException as e:
        queue.put(("error", f"{type(e).__name__}: {e}"))


def in_child(fn: Callable[..., dict], threads: int, **kwargs: Any) -> dict:
    """Run ``fn(**kwargs)`` in a fresh spawned process, so its peak memory is its own."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(fn, {**kwargs, "threads": threads}, queue))
    proc.start()
    status, value = queue.get()
    proc.join()
    if status != "ok":
        raise RuntimeError(f"{fn.__name__}({kwargs}) failed: {value}")
    return value


def machine() -> dict:
    """What the numbers were measured on."""
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)
