"""Helpers shared by the benchmark scripts: threads, measurement, metrics, machine facts, output.

Every script's ``main(argv)`` takes ``--tiny`` (a seconds-long smoke run on tiny models, one
thread), ``--inline`` (measure in this process instead of spawned children: peak memory is then
not isolated), ``--rounds N`` (interleaved rounds per comparison), ``--reject-above F`` (the
share of the CPUs other processes may take before a round counts as disturbed) and ``--json
PATH`` (where its section of the results goes), and returns that section: ``{"name", "rows":
[raw measurements], "metrics": [see metric()]}``.

:func:`interleave` is the timing harness: one long-lived worker per side, built and warmed up
once, then asked for one timed unit each in turn (A, B, A, B, ...), a round being one unit of
every side; rounds that other processes disturbed (:class:`CpuMeter`) are rejected and re-run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent


def rss_mb() -> float:
    """Current resident set size of this process in MB (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far in MB.

    ``VmHWM`` from ``/proc/self/status``: the high-water mark of this process's own address
    space. ``ru_maxrss`` is not used: Linux carries it over from the parent when a child is
    forked (and across ``exec``), so a child of a big parent would report the parent's size.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux


def threads_for(tiny: bool) -> int:
    """Every core for a real run; one for the smoke run (it must not fight a busy machine)."""
    return 1 if tiny else os.cpu_count() or 1


def _set_threads(threads: int | None) -> int | None:
    """Set torch's thread count (importing torch only when asked); return the previous one."""
    if threads is None:
        return None
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    return before


def _child(fn: Callable[..., dict], kwargs: dict, queue: mp.Queue) -> None:
    _set_threads(kwargs.pop("threads"))
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
    before = _set_threads(threads)
    try:
        return fn(**kwargs)
    finally:
        _set_threads(before)


def best_of(fn: Callable[[], Any], repeats: int) -> float:
    """Shortest wall time of ``repeats`` calls of ``fn`` (the least disturbed by other load)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


# ---------------------------------------------------------------- interleaved timing

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _busy_jiffies(cpus: set[int]) -> int:
    """Jiffies the CPUs in ``cpus`` spent not idle (user .. steal) since boot, per /proc/stat.

    Steal counts as busy: on a virtual machine it is time the host gave to someone else.
    (guest time is already inside user/nice.)
    """
    busy = 0
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3:4].isdigit():
                name, *fields = line.split()
                if int(name[3:]) in cpus:
                    v = [int(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
                    busy += sum(v) - v[3] - v[4]
    return busy


def _tree_jiffies(root: int) -> int:
    """CPU jiffies of ``root`` and every live descendant (all threads), plus reaped children.

    utime + stime + cutime + cstime of each process in the tree: a child that exits and is
    waited for moves its time into its parent's cutime/cstime, so nothing is lost or counted
    twice between two readings.
    """
    procs: dict[int, tuple[int, int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                text = f.read()
        except OSError:
            continue  # exited meanwhile
        rest = text[text.rindex(")") + 2 :].split()  # fields 3.. (comm may hold spaces)
        procs[int(entry.name)] = (int(rest[1]), sum(int(x) for x in rest[11:15]))
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        if pid in procs:
            total += procs[pid][1]
            stack.extend(children.get(pid, []))
    return total


class CpuMeter:
    """CPU time that processes *outside* the benchmark took on its CPUs during a unit.

    ``read()`` before and after a unit; ``foreign_s(start, end)`` is the machine's busy time on
    the CPUs this process may run on (/proc/stat, per-CPU lines, user to steal) minus the CPU
    time of the benchmark's own process tree (this process, its workers and theirs), in
    seconds. On an otherwise idle machine it is about 0 however many threads the benchmark
    uses; another job's CPU time shows up one for one. Without /proc it reads None (no
    rejection).
    """

    def __init__(self, root: int | None = None) -> None:
        self.root = root if root is not None else os.getpid()
        try:
            self.cpus = set(os.sched_getaffinity(0))
        except AttributeError:
            self.cpus = set(range(os.cpu_count() or 1))
        try:
            self.read()
            self.available = True
        except (OSError, ValueError, IndexError):
            self.available = False

    @property
    def n_cpus(self) -> int:
        return len(self.cpus)

    def read(self) -> tuple[int, int] | None:
        if getattr(self, "available", True) is False:
            return None
        return _busy_jiffies(self.cpus), _tree_jiffies(self.root)

    def foreign_s(self, start: tuple[int, int] | None, end: tuple[int, int] | None) -> float | None:
        if start is None or end is None:
            return None
        return max(0.0, ((end[0] - start[0]) - (end[1] - start[1])) / CLK_TCK)


def is_disturbed(foreign_s: float | None, wall_s: float, n_cpus: int,
                 reject_above: float) -> bool:
    """Other processes took more than ``reject_above`` of the CPUs' time during the unit.

    A slack of ``2 + n_cpus`` jiffies absorbs the tick granularity of the two readings (it
    matters for units of a few tens of milliseconds only).
    """
    if foreign_s is None:
        return False
    return foreign_s > reject_above * wall_s * n_cpus + (2 + n_cpus) / CLK_TCK


def _build(factory: Callable[..., Any], kwargs: dict) -> tuple[Callable[[], Any], dict]:
    t0 = time.perf_counter()
    built = factory(**kwargs)
    unit, info = built if isinstance(built, tuple) else (built, {})
    info = dict(info)
    info.setdefault("setup_s", time.perf_counter() - t0)
    return unit, info


def _timed(unit: Callable[[], Any]) -> dict:
    t0 = time.perf_counter()
    out = unit()
    return {"seconds": time.perf_counter() - t0, "out": out}


def _worker_main(factory: Callable[..., Any], kwargs: dict, threads: int | None, conn) -> None:
    """A spawned side: build and warm up once, then one timed unit per "run" request."""
    try:
        _set_threads(threads)
        unit, info = _build(factory, kwargs)
        conn.send(("ok", info))
        while True:
            if conn.recv() != "run":
                conn.send(("ok", {"peak_mb": peak_rss_mb()}))
                return
            conn.send(("ok", _timed(unit)))
    except BaseException as e:
        conn.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))


class _SpawnedSide:
    """A side in its own spawned process (so its peak memory is its own)."""

    def __init__(self, name: str, factory: Callable[..., Any], kwargs: dict,
                 threads: int | None) -> None:
        ctx = mp.get_context("spawn")
        self.name = name
        self.conn, child = ctx.Pipe()
        # not daemonic: a side may start worker processes of its own (DataLoader, prepare)
        self.proc = ctx.Process(target=_worker_main, args=(factory, kwargs, threads, child),
                                name=f"bench-{name}")
        self.proc.start()
        child.close()
        self.info = self._reply()

    def _reply(self) -> Any:
        while not self.conn.poll(0.5):
            if not self.proc.is_alive():
                raise RuntimeError(f"side {self.name!r} died (exit code {self.proc.exitcode})")
        status, value = self.conn.recv()
        if status != "ok":
            raise RuntimeError(f"side {self.name!r} failed: {value}")
        return value

    def run(self) -> dict:
        self.conn.send("run")
        return self._reply()

    def finish(self) -> float:
        self.conn.send("stop")
        peak = self._reply()["peak_mb"]
        self.close()
        return peak

    def close(self) -> None:
        self.proc.join(timeout=10)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join()
        self.conn.close()


class _InlineSide:
    """A side in this process (``--inline``): peak memory is the whole process's."""

    def __init__(self, name: str, factory: Callable[..., Any], kwargs: dict,
                 threads: int | None) -> None:
        self.name, self.threads = name, threads
        before = _set_threads(threads)
        try:
            self.unit, self.info = _build(factory, kwargs)
        finally:
            _set_threads(before)

    def run(self) -> dict:
        before = _set_threads(self.threads)
        try:
            return _timed(self.unit)
        finally:
            _set_threads(before)

    def finish(self) -> float:
        self.unit = None
        return peak_rss_mb()

    def close(self) -> None:
        self.unit = None


def interleave(sides: dict[str, tuple[Callable[..., Any], dict]], rounds: int, *,
               threads: int | None = None, inline: bool = False, reject_above: float = 0.1,
               max_rejected: int | None = None, meter: CpuMeter | None = None,
               log: Callable[[str], None] | None = print) -> dict:
    """Time the ``sides`` against each other in interleaved rounds.

    ``sides`` maps a name to ``(factory, kwargs)``: ``factory(**kwargs)`` (a picklable
    module-level function) builds and warms up the side and returns ``unit`` or ``(unit,
    info)``; ``unit()`` is one timed unit of work (its return value is kept as ``out``). Each
    side lives in its own spawned process (in this one with ``inline``) with ``threads`` torch
    threads (``None``: leave torch alone). Sides are built one after another, then every round
    runs one unit of each side in the order given (A, B, A, B, ...).

    A round is rejected when, during any of its units, processes outside the benchmark took
    more than ``reject_above`` of the CPUs' time (:class:`CpuMeter`, :func:`is_disturbed`); it
    is re-run, until ``rounds`` clean rounds or ``max_rejected`` (default ``rounds``)
    rejections. If no round was clean, the disturbed ones are reported (``all_disturbed``).

    Returns ``{"rounds": [{"seconds": {side: s}, "out": {side: ...}, "foreign_share": {side:
    share}, "disturbed": bool}] (the rounds used), "rejected_rounds": [...], "rejected": n,
    "order": [side, ...] (every unit as run), "sides": {side: {"info": ..., "peak_mb": ...,
    "seconds": [s per used round]}}, "all_disturbed": bool, "reject_above": ...}``.
    """
    if rounds < 1:
        raise ValueError("rounds must be at least 1")
    meter = meter or CpuMeter()
    max_rejected = rounds if max_rejected is None else max_rejected
    kind = _InlineSide if inline else _SpawnedSide
    started: dict[str, Any] = {}
    try:
        for name, (factory, kwargs) in sides.items():
            started[name] = kind(name, factory, kwargs, threads)
        clean: list[dict] = []
        rejected: list[dict] = []
        order: list[str] = []
        while len(clean) < rounds and len(clean) + len(rejected) < rounds + max_rejected:
            rnd: dict[str, Any] = {"seconds": {}, "out": {}, "foreign_share": {},
                                   "disturbed": False}
            for name, side in started.items():
                t0 = time.perf_counter()
                start = meter.read()
                reply = side.run()
                end = meter.read()
                wall = time.perf_counter() - t0  # the window the meter saw
                foreign = meter.foreign_s(start, end)
                order.append(name)
                rnd["seconds"][name] = reply["seconds"]
                rnd["out"][name] = reply["out"]
                rnd["foreign_share"][name] = (None if foreign is None
                                              else foreign / (wall * meter.n_cpus))
                rnd["disturbed"] |= is_disturbed(foreign, wall, meter.n_cpus, reject_above)
            (rejected if rnd["disturbed"] else clean).append(rnd)
            if log is not None:
                shares = ", ".join(f"{n} {s:.2f}" for n, s in rnd["foreign_share"].items()
                                   if s is not None)
                log(f"  round {len(clean) + len(rejected)}: "
                    + ", ".join(f"{n} {s:.3f} s" for n, s in rnd["seconds"].items())
                    + (f"; REJECTED (other processes' CPU share: {shares})"
                       if rnd["disturbed"] else ""))
        infos = {name: side.info for name, side in started.items()}
        peaks = {name: side.finish() for name, side in started.items()}
        started.clear()
    finally:
        for side in started.values():
            side.close()
    used = clean or rejected
    return {
        "rounds": used, "rejected_rounds": rejected if clean else [], "rejected": len(rejected),
        "order": order, "all_disturbed": not clean, "reject_above": reject_above,
        "sides": {name: {"info": infos[name], "peak_mb": peaks[name],
                         "seconds": [r["seconds"][name] for r in used]} for name in sides},
    }


def spread(values: list[float], result: dict | None = None, kind: str = "rounds") -> dict:
    """Median, range and count of per-round ``values`` (plus ``result``'s rejections).

    ``kind="peak"``: one peak-memory figure per side, taken over all its rounds.
    """
    return {"kind": kind, "median": statistics.median(values), "min": min(values),
            "max": max(values), "n": len(values), "values": list(values),
            "rejected": result["rejected"] if result else 0,
            "all_disturbed": bool(result and result["all_disturbed"])}


def round_ratios(result: dict, fn: Callable[[dict], float]) -> dict:
    """:func:`spread` of ``fn(round)`` over the rounds :func:`interleave` used."""
    return spread([fn(r) for r in result["rounds"]], result)


def describe_spread(sp: dict | None, fmt: Callable[[float], str] = "{:.3g}".format) -> str:
    """``"(3.60-4.10, 5 rounds, 1 rejected)"``; ``""`` without a spread."""
    if not sp:
        return ""
    if sp["kind"] == "peak":
        return f"(peak of each side over {sp['n']} rounds)"
    text = f"({fmt(sp['min'])}-{fmt(sp['max'])}, {sp['n']} rounds, {sp['rejected']} rejected"
    return text + (", all disturbed)" if sp["all_disturbed"] else ")")


def metric(key: str, what: str, ours: float, unit: str, *, ref: float | None = None,
           ref_what: str = "", ratio: float | None = None, target: float | None = None,
           lower_is_better: bool = False, target_on: str = "ratio", note: str = "",
           spread: dict | None = None, spread_of: str = "ratio") -> dict:
    """One line of the results table.

    ``ratio`` defaults to ``ours / ref``; pass it for a speed-up measured in seconds
    (``ref / ours``). ``target`` applies to the ratio (``target_on="ratio"``) or to ``ours``
    itself (``"value"``); it is a minimum, or a maximum when ``lower_is_better``. ``spread``
    (:func:`spread`, :func:`round_ratios`) is that of the ratio (``spread_of="ratio"``; the
    ratio is then its median unless given) or of ``ours`` (``"value"``); targets are judged
    on the median.
    """
    if ratio is None and spread is not None and spread_of == "ratio":
        ratio = spread["median"]
    if ratio is None and ref:
        ratio = ours / ref
    met = None
    if target is not None:
        x = ratio if target_on == "ratio" else ours
        met = bool(x is not None and (x <= target if lower_is_better else x >= target))
    return {"key": key, "what": what, "ours": ours, "unit": unit, "ref": ref,
            "ref_what": ref_what, "ratio": ratio, "target": target, "target_on": target_on,
            "lower_is_better": lower_is_better, "met": met, "note": note, "spread": spread,
            "spread_of": spread_of}


ROUNDS, REJECT_ABOVE = 5, 0.1  # interleaved rounds per comparison; disturbed-round threshold
# --tiny is a smoke run of the code paths, not a measurement: fewer rounds, none rejected
TINY_ROUNDS, TINY_REJECT_ABOVE = 2, 1.0


def add_timing_options(p: argparse.ArgumentParser) -> None:
    """``--rounds`` and ``--reject-above``, whose defaults depend on ``--tiny``
    (:func:`resolve_timing`)."""
    p.add_argument("--rounds", type=int, default=None,
                   help=f"interleaved rounds per comparison (median and range reported; default "
                        f"{ROUNDS}, {TINY_ROUNDS} with --tiny)")
    p.add_argument("--reject-above", type=float, default=None, metavar="SHARE",
                   help="reject a round when other processes took more than this share of the\n"
                        f"CPUs during it (default {REJECT_ABOVE}; 1 or more: never, the default "
                        "with --tiny)")


def resolve_timing(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` with the ``--rounds`` / ``--reject-above`` defaults of its ``--tiny``."""
    if args.rounds is None:
        args.rounds = TINY_ROUNDS if args.tiny else ROUNDS
    if args.reject_above is None:
        args.reject_above = TINY_REJECT_ABOVE if args.tiny else REJECT_ABOVE
    return args


class _BenchParser(argparse.ArgumentParser):
    def parse_args(self, *args: Any, **kwargs: Any) -> argparse.Namespace:  # type: ignore[override]
        return resolve_timing(super().parse_args(*args, **kwargs))


def parser(doc: str | None) -> argparse.ArgumentParser:
    """The options every script takes (its ``parse_args`` fills the timing defaults)."""
    p = _BenchParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="a seconds-long smoke run (tiny models)")
    p.add_argument("--inline", action="store_true",
                   help="measure in this process (no spawned children; peak memory not isolated)")
    add_timing_options(p)
    p.add_argument("--json", type=Path, default=None, help="write this section's results here")
    return p


def timing_summary(results: list[dict]) -> dict:
    """Rounds used and rejected over several :func:`interleave` results (for the Load line)."""
    return {"rounds": sum(len(r["rounds"]) for r in results),
            "rejected": sum(r["rejected"] for r in results),
            "all_disturbed": sum(r["all_disturbed"] for r in results)}


def section(name: str, args: argparse.Namespace, rows: list[dict], metrics: list[dict],
            seconds: float, interleaved: list[dict] | None = None, **extra: Any) -> dict:
    """Assemble, print and (with ``--json``) write one script's results.

    ``interleaved``: the :func:`interleave` results behind the metrics; every round (per-round
    seconds, rejected ones too) goes into the section as ``"interleaved"``.
    """
    interleaved = interleaved or []
    out = {"name": name, "tiny": args.tiny, "seconds": seconds, "load_avg": os.getloadavg(),
           "rounds": args.rounds, "reject_above": args.reject_above,
           "timing": timing_summary(interleaved), "rows": rows, "metrics": metrics,
           "interleaved": interleaved, **extra}
    for m in metrics:
        sp = describe_spread(m.get("spread"))
        ratio = f"  ratio {m['ratio']:.3g}" if m["ratio"] is not None else ""
        ratio += f" {sp}" if sp else ""
        flag = "" if m["met"] is None else ("  met" if m["met"] else "  MISSED")
        value = "not measured" if m["ours"] is None else f"{m['ours']:.4g} {m['unit']}"
        print(f"{name:9s} {m['what']}: {value}{ratio}{flag}", flush=True)
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
    import torch

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
