"""Helpers shared by the benchmark scripts: threads, measurement, metrics, machine facts, output.

Every script's ``main(argv)`` takes ``--tiny`` (a seconds-long smoke run on tiny models, one
thread), ``--inline`` (measure in this process instead of spawned children: peak memory is then
not isolated) and ``--json PATH`` (where its section of the results goes), and returns that
section: ``{"name", "rows": [raw measurements], "metrics": [see metric()]}``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing as mp
import os
import platform
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent


def rss_mb() -> float:
    """Current resident set size of this process in MB (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def threads_for(tiny: bool) -> int:
    """Every core for a real run; one for the smoke run (it must not fight a busy machine)."""
    return 1 if tiny else os.cpu_count() or 1


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


def measure(fn: Callable[..., dict], threads: int, inline: bool, **kwargs: Any) -> dict:
    """``fn(**kwargs)`` with ``threads`` torch threads, in a spawned child unless ``inline``."""
    if not inline:
        return in_child(fn, threads, **kwargs)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return fn(**kwargs)
    finally:
        torch.set_num_threads(before)


def best_of(fn: Callable[[], Any], repeats: int) -> float:
    """Shortest wall time of ``repeats`` calls of ``fn`` (the least disturbed by other load)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def metric(key: str, what: str, ours: float, unit: str, *, ref: float | None = None,
           ref_what: str = "", ratio: float | None = None, target: float | None = None,
           lower_is_better: bool = False, target_on: str = "ratio", note: str = "") -> dict:
    """One line of the results table.

    ``ratio`` defaults to ``ours / ref``; pass it for a speed-up measured in seconds
    (``ref / ours``). ``target`` applies to the ratio (``target_on="ratio"``) or to ``ours``
    itself (``"value"``); it is a minimum, or a maximum when ``lower_is_better``.
    """
    if ratio is None and ref:
        ratio = ours / ref
    met = None
    if target is not None:
        x = ratio if target_on == "ratio" else ours
        met = bool(x is not None and (x <= target if lower_is_better else x >= target))
    return {"key": key, "what": what, "ours": ours, "unit": unit, "ref": ref,
            "ref_what": ref_what, "ratio": ratio, "target": target, "target_on": target_on,
            "lower_is_better": lower_is_better, "met": met, "note": note}


def parser(doc: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="a seconds-long smoke run (tiny models)")
    p.add_argument("--inline", action="store_true",
                   help="measure in this process (no spawned children; peak memory not isolated)")
    p.add_argument("--json", type=Path, default=None, help="write this section's results here")
    return p


def section(name: str, args: argparse.Namespace, rows: list[dict], metrics: list[dict],
            seconds: float, **extra: Any) -> dict:
    """Assemble, print and (with ``--json``) write one script's results."""
    out = {"name": name, "tiny": args.tiny, "seconds": seconds, "load_avg": os.getloadavg(),
           "rows": rows, "metrics": metrics, **extra}
    for m in metrics:
        ratio = f"  ratio {m['ratio']:.3g}" if m["ratio"] is not None else ""
        flag = "" if m["met"] is None else ("  met" if m["met"] else "  MISSED")
        print(f"{name:9s} {m['what']}: {m['ours']:.4g} {m['unit']}{ratio}{flag}", flush=True)
    if args.json is not None:
        write_json(args.json, out)
    return out


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gb() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def machine() -> dict:
    """What the numbers were measured on."""
    import numpy as np

    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "ram_gb": _ram_gb(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def write_json(path: Path, data: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)
