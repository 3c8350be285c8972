"""``scale``: the pre-training DataModule from 250 k to 16 M rows, to extrapolate to 200 M.

Synthetic shard sets of 250 k, 1 M, 4 M and 16 M rows are written with
:class:`heartgpt.data.ShardWriter` (4,096 rows per shard, 50 rows per subject, 10 per record:
the issue's set-up) into a temporary folder, removed at the end. Rows are 64 tokens (windows of
32 + 1): what grows with rows here -- shard count, row index, subjects, split, epoch order -- does
not depend on a row's length, and the ``long rows`` line repeats the 250 k size with 1,000-token
rows (windows of 500 + 1) to show that setup and memory come out the same.

Each size is measured in a fresh spawned process: ``validate`` (:func:`validate_shard_dir`,
checksums off), DataModule ``setup`` (validating, memory-mapping the row index, splitting the
subjects), then the train loader with 2 workers, batch 64: the main process's peak RSS
(VmHWM) after 20 batches, a worker's peak RSS and its proportional share (PSS: pages shared
with the parent counted by share), and windows/s over the next 100 batches. A least-squares line
through the four sizes gives each figure's cost per row; RESULTS.md extrapolates it to 200 M.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import measure, metric, parser, peak_rss_mb, section, threads_for

SIZES = (250_000, 1_000_000, 4_000_000, 16_000_000)
TINY_SIZES = (2_000, 8_000)
TARGET_ROWS = 200_000_000
ROWS_PER_SHARD, ROWS_PER_SUBJECT, ROWS_PER_RECORD = 4096, 50, 10
SHORT, LONG = 64, 1000  # tokens per row
BATCH, WORKERS, WARM_BATCHES, TIMED_BATCHES = 64, 2, 20, 100


def write_rows(out: Path, n: int, segment: int) -> float:
    """``n`` synthetic rows of ``segment`` tokens; returns the seconds it took."""
    from heartgpt.data.shard_writer import ShardWriter
    from heartgpt.data.shards import ShardMeta

    meta = ShardMeta(modality="ecg", sample_rate=100.0, vocab_size=101, segment_length=segment,
                     label_kind="unlabelled", source="SYNTHETIC bench_scale rows", synthetic=True)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    with ShardWriter(out, meta, ROWS_PER_SHARD) as w:
        for lo in range(0, n, 1 << 16):
            row = np.arange(lo, min(n, lo + (1 << 16)))
            w.add(rng.integers(0, 101, (len(row), segment), dtype=np.uint8),
                  np.char.add("subject-", (row // ROWS_PER_SUBJECT).astype(str)),
                  np.char.add("record-", (row // ROWS_PER_RECORD).astype(str)),
                  (row % ROWS_PER_RECORD) * segment)
    return time.perf_counter() - t0


def _worker_memory(parent: int) -> tuple[float, float]:
    """(peak RSS, PSS) in MB of the largest child process of ``parent`` (a loader worker)."""
    best = (0.0, 0.0)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) != parent:
                continue
            status = (stat.parent / "status").read_text()
            hwm = next(int(x.split()[1]) for x in status.splitlines() if x.startswith("VmHWM:"))
            pss = next(int(x.split()[1]) for x in (stat.parent / "smaps_rollup").read_text()
                       .splitlines() if x.startswith("Pss:"))
        except (OSError, StopIteration, ValueError, IndexError):
            continue
        best = max(best, (hwm / 1024, pss / 1024))
    return best


def measure_size(shard_dir: str, block_size: int) -> dict:
    """One size, in this (fresh) process; see the module docstring."""
    import os

    from heartgpt.data import PretrainDataModule
    from heartgpt.data.shards import validate_shard_dir

    t0 = time.perf_counter()
    validate_shard_dir(shard_dir)
    validate_s = time.perf_counter() - t0
    dm = PretrainDataModule(shard_dir, "ecg", block_size=block_size, global_batch_size=BATCH,
                            seed=0, val_fraction=0.05, test_fraction=0.05, num_workers=WORKERS,
                            verify_checksums=False)
    t0 = time.perf_counter()
    dm.setup("fit")
    setup_s = time.perf_counter() - t0
    loader = dm.train_dataloader()
    warm = min(WARM_BATCHES, len(loader) // 4)  # a tiny set has fewer batches
    timed = min(TIMED_BATCHES, len(loader) - warm)
    batches = iter(loader)
    for _ in range(warm):
        next(batches)
    main_mb = peak_rss_mb()
    worker_mb, worker_pss_mb = _worker_memory(os.getpid())
    t0 = time.perf_counter()
    windows = sum(next(batches)[0].size(0) for _ in range(timed))
    seconds = time.perf_counter() - t0
    main_mb = max(main_mb, peak_rss_mb())
    batches.close()
    return {"validate_s": validate_s, "setup_s": setup_s, "main_peak_mb": main_mb,
            "worker_peak_mb": worker_mb, "worker_pss_mb": worker_pss_mb,
            "windows_per_s": windows / seconds, "shards": len(dm.manifest.shards),
            "subjects": dm.manifest.num_subjects}


def fit(rows: list[int], values: list[float]) -> tuple[float, float]:
    """(intercept, slope per row) of the least-squares line."""
    slope, intercept = np.polyfit(np.asarray(rows, dtype=float), np.asarray(values), 1)
    return float(intercept), float(slope)


def main(argv: list[str] | None = None) -> dict:
    args = parser(__doc__).parse_args(argv)
    sizes = TINY_SIZES if args.tiny else SIZES
    threads = threads_for(args.tiny)
    t0 = time.perf_counter()
    rows: list[dict] = []
    tmp = Path(tempfile.mkdtemp(prefix="heartgpt-bench-scale-"))
    try:
        plan = [(n, SHORT, 32) for n in sizes] + [(sizes[0], LONG, 500)]
        for n, segment, block in plan:
            shard_dir = tmp / f"rows-{n}-{segment}"
            write_s = write_rows(shard_dir, n, segment)
            r = measure(measure_size, threads, args.inline, shard_dir=str(shard_dir),
                        block_size=block)
            rows.append({"rows": n, "tokens_per_row": segment, "write_s": write_s, **r})
            print(f"scale     {n:>11,} rows x {segment:>4} tokens: setup {r['setup_s']:.2f} s, "
                  f"main {r['main_peak_mb']:.0f} MB, worker {r['worker_peak_mb']:.0f} MB "
                  f"(PSS {r['worker_pss_mb']:.0f}), {r['windows_per_s']:.0f} windows/s",
                  flush=True)
            shutil.rmtree(shard_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    short = [r for r in rows if r["tokens_per_row"] == SHORT]
    ns = [r["rows"] for r in short]
    extrapolated = {}
    for key in ("validate_s", "setup_s", "main_peak_mb", "worker_peak_mb", "worker_pss_mb"):
        intercept, slope = fit(ns, [r[key] for r in short])
        extrapolated[key] = {"intercept": intercept, "per_row": slope,
                             "at_200M": intercept + slope * TARGET_ROWS}
    big = short[-1]
    metrics = [
        metric("scale_setup", f"DataModule setup at {big['rows']:,} rows", big["setup_s"], "s",
               target=5.0, lower_is_better=True, target_on="value"),
        metric("scale_main_rss", f"main process peak RSS at {big['rows']:,} rows",
               big["main_peak_mb"], "MB", target=600.0, lower_is_better=True, target_on="value"),
        metric("scale_worker_rss", f"loader worker peak RSS at {big['rows']:,} rows",
               big["worker_peak_mb"], "MB", target=600.0, lower_is_better=True,
               target_on="value"),
    ]
    # --tiny's sizes differ by a few MB of noise (and --inline shares this process's peak):
    # a slope fitted to them says nothing, so the extrapolations are not reported there.
    tiny = "not measured: --tiny sizes are too small to fit a per-row slope"
    for key, what in (("main_peak_mb", "main process"), ("worker_peak_mb", "loader worker")):
        e = extrapolated[key]
        metrics.append(metric(
            f"scale_{key}_200M", f"{what} peak RSS extrapolated to 200 M rows",
            None if args.tiny else e["at_200M"], "MB", target=None if args.tiny else 1000.0,
            lower_is_better=True,
            target_on="value", note=tiny if args.tiny else
            f"least squares over {len(ns)} sizes: {e['intercept']:.0f} MB + "
            f"{e['per_row'] * 2**20:.3g} bytes/row"))
    e = extrapolated["setup_s"]
    metrics.append(metric("scale_setup_200M", "DataModule setup extrapolated to 200 M rows",
                          None if args.tiny else e["at_200M"], "s",
                          note=tiny if args.tiny else
                          f"{e['intercept']:.2f} s + {e['per_row'] * 1e6:.3g} s per M rows"
                          " (it stats every shard: it grows with shards)"))
    return section("scale", args, rows, metrics, time.perf_counter() - t0,
                   extrapolated=extrapolated, threads=threads)


if __name__ == "__main__":
    main()
