"""``prepare``: records/s turning 10-s recordings into shards.

Single-channel 10-s ECG recordings at 500 Hz (the CinC 2020 rate and length the paper
pre-trained on), cut from one synthetic demo subject, are written to a temporary folder: 400 as
CSV (with a header) and 2000 as .npy (which prepare about 10x faster).
:func:`heartgpt.data.pipeline.prepare_records` -- what ``python -m heartgpt.prepare
input=<folder>`` runs -- reads, resamples to 100 Hz, tokenises one 1000-sample segment per
record and writes the shards, with 1 and 2 worker processes. The time includes finding the
files and committing the shards (manifest, checksums).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import metric, parser, section
from heartgpt.data.demo import draw_subjects, synthesize
from heartgpt.data.pipeline import PrepareSpec, SegmentSpec, prepare_records
from heartgpt.data.readers import find_records

RATE = 500.0  # Hz of the written recordings
SECONDS = 10


def write_recordings(root: Path, n_csv: int, n_npy: int) -> None:
    """10-s recordings: ``csv/rec-NNNN.csv`` and ``npy/rec-NNNN.npy`` (cut from one subject)."""
    n = max(n_csv, n_npy)
    distinct = min(n, 400)  # recordings repeat after 400 (synthesising costs more than preparing)
    subject = draw_subjects("ecg", 1, seed=0)[0]
    signal = synthesize(subject, "ecg", distinct * SECONDS).signal  # (distinct * 5000,) 500 Hz
    records = signal[: distinct * int(SECONDS * RATE)].reshape(distinct, -1)
    (root / "csv").mkdir()
    (root / "npy").mkdir()
    for i in range(n_csv):
        np.savetxt(root / "csv" / f"rec-{i:04d}.csv", records[i % distinct], fmt="%.6f",
                   header="ECG", comments="")
    for i in range(n_npy):
        np.save(root / "npy" / f"rec-{i:04d}.npy", records[i % distinct])


def prepare_rate(root: Path, fmt: str, workers: int) -> dict:
    spec = PrepareSpec(modality="ecg", label_kind="unlabelled", channel=0, sample_rate=RATE,
                       segment=SegmentSpec(1000, 1000))
    out = root / f"shards-{fmt}-{workers}"
    t0 = time.perf_counter()
    files = find_records(root / fmt, fmt)
    summary, _ = prepare_records(files, spec, out, source="benchmark", rows_per_shard=4096,
                                 num_workers=workers, progress=False)
    seconds = time.perf_counter() - t0
    return {"format": fmt, "workers": workers, "records": summary.records_read,
            "segments": summary.segments_written, "seconds": seconds,
            "records_per_s": summary.records_read / seconds}


def main(argv: list[str] | None = None) -> dict:
    args = parser(__doc__).parse_args(argv)
    n_csv, n_npy = (6, 6) if args.tiny else (400, 2000)  # .npy: enough to time 2 workers
    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="heartgpt-bench-") as tmp:
        root = Path(tmp)
        write_recordings(root, n_csv, n_npy)
        for fmt in ("csv", "npy"):
            for workers in (1, 2):
                rows.append(prepare_rate(root, fmt, workers))
                print(f"prepare   {fmt} {workers} worker(s): {rows[-1]['records_per_s']:7.0f} "
                      "records/s", flush=True)
    metrics = [metric(f"prepare_{r['format']}_w{r['workers']}",
                      f"prepare, 10-s {r['format'].upper()} recordings, {r['workers']} "
                      f"worker(s): records/s", r["records_per_s"], "records/s") for r in rows]
    return section("prepare", args, rows, metrics, time.perf_counter() - t0,
                   records={"csv": n_csv, "npy": n_npy})


if __name__ == "__main__":
    main()
