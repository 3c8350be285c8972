"""Run every benchmark and write ``bench/results.json`` and ``bench/RESULTS.md`` (``make bench``).

Each script runs in its own subprocess; the sides of every comparison are measured inside that
one script's run, interleaved round by round (``bench.common.interleave``). ``--tiny`` runs the smoke versions and writes to a
temporary folder unless ``--out-dir`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import (
    BENCH_DIR,
    REPO,
    add_timing_options,
    describe_spread,
    machine,
    resolve_timing,
    write_json,
)

SCRIPTS = ("bench_train", "bench_generate", "bench_data", "bench_prepare", "bench_inference",
           "bench_predict", "bench_scale")

# Raw-measurement columns shown per section: (key, header, format).
COLUMNS = {
    "train": [("impl", "implementation", "{}"), ("batch", "batch", "{}"),
              ("seconds_per_step", "s/step (median)", "{:.2f}"), ("range_s", "range", "{}"),
              ("rounds", "rounds", "{}"), ("tokens_per_s", "tokens/s", "{:.0f}"),
              ("peak_mb", "peak MB", "{:.0f}"), ("warmup_s", "warm-up s", "{:.1f}")],
    "generate": [("impl", "mode", "{}"), ("new_tokens", "new tokens", "{}"),
                 ("seconds", "seconds", "{:.2f}"), ("range_s", "range", "{}"),
                 ("tokens_per_s", "tokens/s", "{:.1f}"), ("how", "timed as", "{}")],
    "data": [("workers", "workers", "{}"), ("windows", "windows", "{}"),
             ("seconds", "seconds", "{:.2f}"), ("windows_per_s", "windows/s", "{:.1f}"),
             ("range", "range", "{}")],
    "prepare": [("format", "format", "{}"), ("workers", "workers", "{}"),
                ("records", "records", "{}"), ("seconds", "seconds", "{:.2f}"),
                ("records_per_s", "records/s", "{:.0f}"), ("range", "range", "{}"),
                ("est_seconds_40k", "40 k records, s", "{:.0f}")],
    "scale": [("rows", "rows", "{:,}"), ("tokens_per_row", "tokens/row", "{}"),
              ("shards", "shards", "{:,}"), ("subjects", "subjects", "{:,}"),
              ("validate_s", "validate s", "{:.2f}"), ("setup_s", "DataModule setup s", "{:.2f}"),
              ("main_peak_mb", "main peak MB", "{:.0f}"),
              ("worker_peak_mb", "worker peak MB", "{:.0f}"),
              ("worker_pss_mb", "worker PSS MB", "{:.0f}"),
              ("windows_per_s", "windows/s", "{:.0f}")],
    "inference": [("tool", "tool", "{}"), ("threads", "threads", "{}"),
                  ("minutes", "minutes timed", "{:g}"), ("seconds", "seconds", "{:.2f}"),
                  ("seconds_per_hour", "s per hour", "{:.1f}"),
                  ("range", "range", "{}"), ("realtime_x", "x real time", "{:.0f}")],
    "predict": [("mode", "mode", "{}"), ("threads", "threads", "{}"),
                ("recordings", "recordings", "{}"), ("signal_hours", "hours", "{:.2f}"),
                ("seconds", "seconds (median)", "{:.1f}"), ("range", "range", "{}"),
                ("recordings_per_min", "recordings/min", "{:.1f}"),
                ("signal_hours_per_min", "hours/min", "{:.2f}")],
}


def run_script(name: str, json_path: Path, tiny: bool, inline: bool, rounds: int,
               reject_above: float) -> dict:
    cmd = [sys.executable, "-m", f"bench.{name}", "--json", str(json_path),
           "--rounds", str(rounds), "--reject-above", str(reject_above)]
    cmd += ["--tiny"] * tiny + ["--inline"] * inline
    print(f"== {' '.join(cmd[1:])}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, check=False)
    if proc.returncode != 0:
        return {"name": name.removeprefix("bench_"), "error": f"exit status {proc.returncode}",
                "seconds": time.perf_counter() - t0, "rows": [], "metrics": []}
    return json.loads(json_path.read_text())


def _num(x: float) -> str:
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.3g}" if abs(x) >= 1 else f"{x:.2g}"


def _target(m: dict) -> str:
    if m["target"] is None:
        return "–"
    op = "≤" if m["lower_is_better"] else "≥"
    if m["target_on"] == "value":
        return f"{op} {_num(m['target'])} {m['unit']}"
    return f"{op} {_num(m['target'])}x" if m["target"] >= 1 else f"{op} {m['target']:.2f}x"


def _ratio(m: dict) -> str:
    """``3.95x (3.60-4.10, 5 rounds, 1 rejected)``: the median and the rounds' range."""
    if m["ratio"] is None:
        return "–"
    sp = m.get("spread") if m.get("spread_of", "ratio") == "ratio" else None
    text = f"{_num(m['ratio'])}x"
    return f"{text} {describe_spread(sp, _num)}" if sp else text


def _ours(m: dict) -> str:
    if m["ours"] is None:  # e.g. a CUDA row on a machine without one: the note says why
        return "not measured"
    sp = m.get("spread") if m.get("spread_of") == "value" else None
    text = f"{_num(m['ours'])} {m['unit']}"
    return f"{text} {describe_spread(sp, _num)}" if sp else text


def _rejected(s: dict) -> str:
    t = s.get("timing")
    if not t or not t["rounds"]:
        return ""
    text = f" ({t['rejected']} of {t['rounds'] + t['rejected']} rounds rejected"
    return text + (f"; {t['all_disturbed']} comparison(s) had no clean round)"
                   if t["all_disturbed"] else ")")


def _result(m: dict) -> str:
    return "–" if m["met"] is None else ("met" if m["met"] else "**missed**")


def _table(header: list[str], lines: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return out + ["| " + " | ".join(cells) + " |" for cells in lines]


def markdown(results: dict) -> str:
    m = results["machine"]
    sections = results["sections"]
    metrics = [x for s in sections for x in s["metrics"]]
    loads = [s["load_avg"][0] for s in sections if "load_avg" in s]
    shared = any(load > (m["cpu_count"] or 1) + 0.5 for load in loads)
    lines = [
        "# Benchmarks: heartgpt versus the released HeartGPT implementation",
        "",
        f"Written by `make bench` (`python -m bench`, {results['seconds']:.0f} s) on "
        f"{m['date']}. Do not edit: rerun. How to read it: `bench/README.md`."
        + (" Re-run since (`python -m bench --only ... --update`): "
           + ", ".join(f"{name} on {date}" for name, date in results["updated"]["sections"].items())
           + "; the other sections are from the first date." if results.get("updated") else ""),
        "",
        f"- **Machine**: {m['cpu']}, {m['cpu_count']} cores, {m['ram_gb']} GB RAM; "
        f"{m['platform']}.",
        f"- **Software**: Python {m['python']}, torch {m['torch']}, numpy {m['numpy']}; "
        f"torch threads: every core ({m['cpu_count']}) unless a row says otherwise.",
        "- **GPU**: " + (f"{m['cuda']} (CUDA rows below)." if m["cuda"] else
                         "none on this machine, so no CUDA bf16/flash-attention numbers were "
                         "recorded (bench_train adds them when CUDA is available)."),
        "- **Load**: 1-minute load average at the end of each script, and the timing rounds "
        "rejected because other processes took more than "
        f"{100 * sections[0].get('reject_above', 0.1) if sections else 10:.0f}% of the CPUs "
        "during them (each re-run; bench/README.md): "
        + ", ".join(f"{s['name']} {s['load_avg'][0]:.1f}{_rejected(s)}" for s in sections
                    if "load_avg" in s)
        + (f". **The machine was shared with other jobs** (load above its {m['cpu_count']} "
           "cores), so absolute timings are disturbed; each ratio compares two sides "
           "measured in one process run, which disturbance affects alike only on average."
           if shared else f". That is about the benchmark's own {m['cpu_count']} threads: no "
           "other job held the CPU for long during this run. (The machine is shared; runs "
           "under load differ widely, the baseline's and the token-by-token steps most.)"),
        "- **Baseline**: `bench/baseline.py`, a faithful re-implementation of the released model "
        "(a Python loop over 8 heads, a materialised masked T x T softmax, attention dropout "
        "0.2), holding the same weights as ours and fed the same batches.",
        "",
        "## Every metric",
        "",
        "Ratio: ours / compared-with for throughput and memory, the speed-up (compared-with "
        "time / our time) for generation, and how many times faster than real time for the "
        "tools. Each is the median of interleaved rounds (each round one unit of each side, "
        "A/B/A/B), with the rounds' range, their number and how many disturbed rounds were "
        "rejected and re-run; targets are judged on the median. Peak memory is one figure per "
        "side (its own process's VmHWM).",
        "",
    ]
    rows = []
    for x in metrics:
        ref = f"{x['ref_what']}: {_num(x['ref'])}" if x["ref"] is not None else "–"
        if x["unit"] == "s/h" and x["ref"] is not None:
            ref = x["ref_what"]
        rows.append([x["what"], _ours(x), ref, _ratio(x), _target(x), _result(x)])
    lines += _table(["metric", "ours", "compared with", "ratio", "target", "result"], rows)
    missed = [x for x in metrics if x["met"] is False]
    noted = [x for x in metrics if x["note"]]
    failed = [s for s in sections if "error" in s]
    lines += ["", "## Misses and notes", ""]
    if not missed and not failed:
        lines.append("Every target was met.")
    for x in missed:
        lines.append(f"- **Missed: {x['what']}** ({_ratio(x)} against {_target(x)}).")
    for s in failed:
        lines.append(f"- **{s['name']} failed**: {s['error']}.")
    for x in noted:
        lines.append(f"- {x['what']}: {x['note']}.")
    for s in sections:
        cols = COLUMNS.get(s["name"])
        if not cols or not s["rows"]:
            continue
        lines += ["", f"## {s['name']} ({s['seconds']:.0f} s)", ""]
        body = [[fmt.format(r[k]) if r.get(k) is not None else "–" for k, _, fmt in cols]
                for r in s["rows"]]
        lines += _table([h for _, h, _ in cols], body)
        if s.get("extrapolated"):
            lines += ["", "Least-squares line through the 64-token sizes, extrapolated to 200 M "
                      "rows:", ""]
            lines += _table(["figure", "at 0 rows", "per row", "at 200 M rows"], [
                [k, f"{e['intercept']:.3g}", f"{e['per_row']:.3g}", f"{e['at_200M']:.3g}"]
                for k, e in s["extrapolated"].items()])
        if s.get("breakdown"):
            lines += ["", "Pieces of a step (ms, best of several; `bench_generate.breakdown`): "
                      + ", ".join(f"{k} {1e3 * v:.2f}" for k, v in s["breakdown"].items())]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tiny", action="store_true", help="smoke versions of every script")
    p.add_argument("--inline", action="store_true", help="scripts measure in their own process")
    p.add_argument("--out-dir", type=Path, default=None,
                   help="where results.json and RESULTS.md go (default: bench/, or a "
                        "temporary folder with --tiny)")
    p.add_argument("--only", nargs="+", choices=SCRIPTS, default=list(SCRIPTS))
    p.add_argument("--update", action="store_true",
                   help="with --only: keep the other scripts' sections of the existing "
                        "results.json (RESULTS.md says which were re-run when)")
    add_timing_options(p)
    args = resolve_timing(p.parse_args(argv))
    out_dir = args.out_dir or (Path(tempfile.mkdtemp(prefix="heartgpt-bench-")) if args.tiny
                               else BENCH_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    load_start = os.getloadavg()
    sections = []
    with tempfile.TemporaryDirectory(prefix="heartgpt-bench-") as tmp:
        for name in args.only:
            sections.append(run_script(name, Path(tmp) / f"{name}.json", args.tiny, args.inline,
                                       args.rounds, args.reject_above))
    results = {"machine": machine(), "tiny": args.tiny, "seconds": time.perf_counter() - t0,
               "load_avg_start": load_start, "sections": sections}
    old = out_dir / "results.json"
    if args.update and old.is_file():
        before = json.loads(old.read_text())
        ran = {s["name"] for s in sections}
        kept = [s for s in before["sections"] if s["name"] not in ran]
        order = [n.removeprefix("bench_") for n in SCRIPTS]
        results["sections"] = sorted(kept + sections, key=lambda s: order.index(s["name"])
                                     if s["name"] in order else len(order))
        earlier = before.get("updated", {})
        dates = earlier.get("sections", {})
        if isinstance(dates, list):  # written before sections carried their own dates
            dates = dict.fromkeys(dates, earlier.get("date"))
        dates = {**dates, **dict.fromkeys(ran, results["machine"]["date"])}
        results["updated"] = {"sections": dict(sorted(dates.items())),
                              "first_written": earlier.get("first_written",
                                                           before["machine"]["date"])}
        results["seconds"] = before["seconds"]
        results["machine"] = {**results["machine"], "date": results["updated"]["first_written"]}
    write_json(out_dir / "results.json", results)
    (out_dir / "RESULTS.md").write_text(markdown(results))
    print(f"wrote {out_dir / 'results.json'} and {out_dir / 'RESULTS.md'} "
          f"in {results['seconds']:.0f} s", flush=True)
    return 1 if any("error" in s for s in sections) else 0


if __name__ == "__main__":
    sys.exit(main())
