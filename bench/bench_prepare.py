"""``prepare``: records/s turning 10-s recordings into shards.

Single-channel 10-s ECG recordings at 500 Hz (the CinC 2020 rate and length the paper
pre-trained on), cut from one synthetic demo subject, are written to a temporary folder: 400 as
CSV (with a header), 2000 as .npy (which prepare faster) and 2000 as WFDB (format 16,
``wfdb.wrsamp``: a ``.hea`` header and a ``.dat`` file each, as PhysioNet distributes them).
:func:`heartgpt.data.pipeline.prepare_records` -- what ``python -m heartgpt.prepare
input=<folder>`` runs -- reads, resamples to 100 Hz, tokenises one 1000-sample segment per
record and writes the shards, with 1 and 2 worker processes. The time includes finding the
files and committing the shards (manifest, checksums). The six runs take turns, one whole preparation
each per round (:func:`bench.common.interleave`, in this process); records/s is the median of
the rounds, with their range. Each row also gives ``est_seconds_40k``, the time the CinC 2020
pre-training set (40 k ten-second records) would take at that rate; the target (issue 18) is
under 2 minutes on 2 cores for WFDB and NumPy: >= 333 records/s with 2 workers.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import wfdb

from bench.common import interleave, metric, parser, section, spread
from heartgpt.data.demo import draw_subjects, synthesize
from heartgpt.data.pipeline import PrepareSpec, SegmentSpec, prepare_records
from heartgpt.data.readers import find_records

RATE = 500.0  # Hz of the written recordings
SECONDS = 10
CINC_RECORDS = 40_000  # ten-second records in the CinC 2020 pre-training set
TARGET_SECONDS = 120.0  # issue 18: all of them in under 2 minutes on 2 cores (WFDB, NumPy)
FORMATS = ("csv", "npy", "wfdb")


def write_recordings(root: Path, n_csv: int, n_npy: int, n_wfdb: int) -> None:
    """10-s recordings: ``csv/rec-NNNN.csv``, ``npy/rec-NNNN.npy`` and ``wfdb/rec-NNNN.hea``
    (+ ``.dat``, format 16), cut from one subject."""
    n = max(n_csv, n_npy, n_wfdb)
    distinct = min(n, 400)  # recordings repeat after 400 (synthesising costs more than preparing)
    subject = draw_subjects("ecg", 1, seed=0)[0]
    signal = synthesize(subject, "ecg", distinct * SECONDS).signal  # (distinct * 5000,) 500 Hz
    records = signal[: distinct * int(SECONDS * RATE)].reshape(distinct, -1)
    for fmt in FORMATS:
        (root / fmt).mkdir()
    for i in range(n_csv):
        np.savetxt(root / "csv" / f"rec-{i:04d}.csv", records[i % distinct], fmt="%.6f",
                   header="ECG", comments="")
    for i in range(n_npy):
        np.save(root / "npy" / f"rec-{i:04d}.npy", records[i % distinct])
    for i in range(n_wfdb):
        wfdb.wrsamp(f"rec-{i:04d}", fs=RATE, units=["mV"], sig_name=["I"],
                    p_signal=records[i % distinct][:, None], fmt=["16"], write_dir=str(root / "wfdb"))


def prepare_unit(root: str, fmt: str, workers: int):
    """A unit prepares every ``fmt`` recording under ``root`` into a fresh shard folder."""
    spec = PrepareSpec(modality="ecg", label_kind="unlabelled", channel=0, sample_rate=RATE,
                       segment=SegmentSpec(1000, 1000))
    out = Path(root) / f"shards-{fmt}-{workers}"

    def unit() -> dict:
        shutil.rmtree(out, ignore_errors=True)
        files = find_records(Path(root) / fmt, fmt)
        summary, _ = prepare_records(files, spec, out, source="benchmark", rows_per_shard=4096,
                                     num_workers=workers, progress=False)
        return {"records": summary.records_read, "segments": summary.segments_written}

    return unit


def main(argv: list[str] | None = None) -> dict:
    args = parser(__doc__).parse_args(argv)
    n_csv, n_npy = (6, 6) if args.tiny else (400, 2000)  # .npy: enough to time 2 workers
    n_wfdb = n_npy
    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="heartgpt-bench-") as tmp:
        root = Path(tmp)
        write_recordings(root, n_csv, n_npy, n_wfdb)
        # in this process (nothing to isolate: no memory figure), the six runs interleaved
        result = interleave(
            {f"{fmt}_w{w}": (prepare_unit, dict(root=tmp, fmt=fmt, workers=w))
             for fmt in FORMATS for w in (1, 2)},
            args.rounds, inline=True, reject_above=args.reject_above)
    for name, side in result["sides"].items():
        fmt, workers = name.split("_w")
        records = result["rounds"][0]["out"][name]["records"]
        rates = [records / s for s in side["seconds"]]
        rows.append({"format": fmt, "workers": int(workers), "records": records,
                     "segments": result["rounds"][0]["out"][name]["segments"],
                     "seconds": statistics.median(side["seconds"]),
                     "records_per_s": statistics.median(rates),
                     "est_seconds_40k": CINC_RECORDS / statistics.median(rates),
                     "range": f"{min(rates):.0f}-{max(rates):.0f}", "round_records_per_s": rates,
                     "spread": spread(rates, result)})
        print(f"prepare   {fmt} {workers} worker(s): {rows[-1]['records_per_s']:7.0f} "
              f"records/s ({rows[-1]['range']}), 40 k records in "
              f"{rows[-1]['est_seconds_40k']:.0f} s", flush=True)
    metrics = []
    for r in rows:
        targeted = r["format"] in ("npy", "wfdb") and r["workers"] == 2  # issue 18's target
        metrics.append(metric(
            f"prepare_{r['format']}_w{r['workers']}",
            f"prepare, 10-s {r['format'].upper()} recordings, {r['workers']} worker(s): records/s",
            r["records_per_s"], "records/s", spread=r.pop("spread"), spread_of="value",
            target=CINC_RECORDS / TARGET_SECONDS if targeted else None, target_on="value",
            note=f"40 k CinC 2020 records in {r['est_seconds_40k']:.0f} s" if targeted else ""))
    return section("prepare", args, rows, metrics, time.perf_counter() - t0,
                   interleaved=[result], records={"csv": n_csv, "npy": n_npy, "wfdb": n_wfdb})


if __name__ == "__main__":
    main()
