"""The output folder of ``python -m heartgpt.predict``: resumable, atomic, one table per run.

Layout of ``out_dir``::

    predict_run.json     what the results come from: checkpoint (path, sha256), mode settings,
                         channel, sample rate; a re-run with other ones is refused
    parts/<key>.json     one finished recording (its row and its window/beat rows), written
                         atomically when it is done: the resume state. <key>.npy: embeddings
    recordings.csv       a row per recording: status ok | failed, the error, the mode's numbers
    windows.csv          a row per window (af, loss, embed) or beats.csv, a row per beat
    embeddings.h5        embed: the pooled vectors, a row per usable window
    summary.json         counts, hours of signal, wall time, throughput

A recording counts as done when its part exists, reads back, and was made from a file of the
same size and modification time (an edited recording is predicted again). A failed recording
is done too (its reason is in the table); fixing the file changes its time, so a re-run retries
it. The tables are rebuilt from the parts at the end of every run, so a run killed part-way and
re-run gives the tables an uninterrupted run would. :func:`read_embeddings` reads an embed
run's vectors back (``python -m heartgpt.probe``).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from heartgpt.data.recording import RecordFile
from heartgpt.errors import InputError
from heartgpt.files import atomic_path, write_json_atomic
from heartgpt.inference.prediction import RecordingPrediction

log = logging.getLogger(__name__)
MANIFEST = "predict_run.json"
PARTS = "parts"
RECORDINGS = "recordings.csv"
ITEM_TABLES = {"af": "windows.csv", "beats": "beats.csv", "loss": "windows.csv",
               "embed": "windows.csv", "head": "windows.csv"}
EMBEDDINGS = "embeddings.h5"
SUMMARY = "summary.json"
RESULT_FILES = (RECORDINGS, "windows.csv", "beats.csv", EMBEDDINGS, SUMMARY)
_BASE_COLUMNS = ["recording", "path", "format", "status", "error", "sample_rate_hz",
                 "duration_s"]


def file_stamp(path: Path) -> dict[str, int]:
    """What identifies a file's contents cheaply: its size and modification time (ns)."""
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


class PredictionStore:
    """The results folder of one ``predict`` configuration (see the module docstring)."""

    def __init__(self, out_dir: str | Path, mode: str) -> None:
        self.out_dir, self.mode = Path(out_dir), mode
        self.parts = self.out_dir / PARTS

    # ------------------------------------------------------------------ the run's identity
    def claim(self, settings: Mapping[str, Any], overwrite: bool = False) -> None:
        """Make ``out_dir`` this configuration's: write the manifest, or check that the one
        there has the same ``settings`` (then the parts there are resumed).

        Raises:
            InputError: ``out_dir`` holds results of other settings and ``overwrite`` is off.
        """
        path = self.out_dir / MANIFEST
        settings = json.loads(json.dumps(dict(settings), default=str))
        if path.exists() and not overwrite:
            try:
                earlier = json.loads(path.read_text())
            except (OSError, ValueError) as e:
                raise InputError(path, f"cannot read the earlier run's settings ({e}); give "
                                       "another out_dir= or overwrite=true") from None
            before, now = _flat(earlier), _flat(settings)
            differ = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
            if differ:
                raise InputError(self.out_dir, "holds predictions made with other settings "
                                 f"(differing: {', '.join(differ)}); its results would mix: give "
                                 "another out_dir= or overwrite=true to replace them")
            return
        if overwrite:
            shutil.rmtree(self.parts, ignore_errors=True)
            for name in (MANIFEST, *RESULT_FILES):
                (self.out_dir / name).unlink(missing_ok=True)
        write_json_atomic(path, settings)

    # ------------------------------------------------------------------ per recording
    def _key(self, name: str) -> str:
        return hashlib.sha1(name.encode()).hexdigest()[:20]

    def part_path(self, name: str) -> Path:
        return self.parts / f"{self._key(name)}.json"

    def _read_part(self, rf: RecordFile) -> dict[str, Any] | None:
        """The finished part of ``rf``, or ``None`` if missing, unreadable or of another file."""
        path = self.part_path(rf.name)
        if not path.exists():
            return None
        try:
            part = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            log.warning("%s: unreadable result part, predicting %s again (%s)", path, rf.name, e)
            return None
        try:
            stamp = file_stamp(rf.path)
        except OSError:
            return None
        if part.get("name") != rf.name or part.get("stamp") != stamp:
            return None
        if part["row"]["status"] == "ok" and self.mode == "embed" \
                and not path.with_suffix(".npy").exists():
            return None
        return part

    def done(self, records: Iterable[RecordFile]) -> set[str]:
        """Names of the ``records`` whose results are already here."""
        return {rf.name for rf in records if self._read_part(rf) is not None}

    def write(self, rf: RecordFile, sample_rate: float | None, duration_s: float | None,
              result: RecordingPrediction | str, seconds: float) -> None:
        """Store one recording's result (or, as a string, why it failed), atomically."""
        row: dict[str, Any] = {"recording": rf.name, "path": str(rf.path), "format": rf.format,
                               "sample_rate_hz": sample_rate, "duration_s": duration_s}
        items: list[dict[str, Any]] = []
        path = self.part_path(rf.name)
        if isinstance(result, str):
            row.update(status="failed", error=result)
        else:
            row.update(status="ok", error="", **result.row)
            items = result.items
            if result.array is not None:
                with atomic_path(path.with_suffix(".npy")) as tmp, open(tmp, "wb") as f:
                    np.save(f, result.array)
        part = {"name": rf.name, "stamp": file_stamp(rf.path), "seconds": seconds, "row": row,
                "items": items}
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(part, default=_json_default))

    # ------------------------------------------------------------------ the tables
    def merge(self, records: Sequence[RecordFile], done_before: set[str],
              wall_seconds: float,
              describe: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None
              ) -> dict[str, Any]:
        """Write the tables of ``records`` from their parts (atomically) and the summary
        (with ``describe(item rows)``'s keys, when given).

        Raises:
            InputError: a recording of the run has no result part (a process failed).
        """
        parts = []
        for rf in records:
            part = self._read_part(rf)
            if part is None:
                raise InputError(rf.path, f"no result in {self.parts}: a process stopped before "
                                          "predicting it; run the same command again to resume")
            parts.append(part)
        rows = [p["row"] for p in parts]
        columns = _BASE_COLUMNS + _extra_columns(rows, _BASE_COLUMNS)
        files = [self._write_csv(RECORDINGS, columns, rows)]
        items = [{"recording": p["name"], **item} for p in parts for item in p["items"]]
        if self.mode == "embed":
            items = self._write_embeddings(parts, items)
            files.append(self.out_dir / EMBEDDINGS)
        item_columns = ["recording", *_extra_columns(items, ["recording"])]
        files.insert(1, self._write_csv(ITEM_TABLES[self.mode], item_columns, items))
        ok = [r for r in rows if r["status"] == "ok"]
        hours = sum(r["duration_s"] or 0.0 for r in ok) / 3600
        predicted_now = [p for p in parts if p["name"] not in done_before]
        summary = {
            "mode": self.mode, "recordings": len(rows), "ok": len(ok),
            "failed": len(rows) - len(ok), "done_in_earlier_runs": len(parts) - len(predicted_now),
            "not_recordings": sum(rf.problem is not None for rf in records),  # of the failed
            "predicted_now": len(predicted_now), "hours_of_signal": hours,
            "hours_predicted_now": sum(p["row"]["duration_s"] or 0.0 for p in predicted_now
                                       if p["row"]["status"] == "ok") / 3600,
            "wall_seconds": wall_seconds,
            "failures": {r["recording"]: r["error"] for r in rows if r["status"] != "ok"},
            "files": [str(f) for f in files],
        }
        if wall_seconds > 0 and predicted_now:
            summary["recordings_per_minute"] = 60 * len(predicted_now) / wall_seconds
            summary["signal_hours_per_minute"] = 60 * summary["hours_predicted_now"] / wall_seconds
        if describe is not None:
            summary.update(describe([i for i in items if i.get("status") == "ok"]))
        write_json_atomic(self.out_dir / SUMMARY, summary)
        return summary

    def _write_csv(self, name: str, columns: list[str], rows: list[dict[str, Any]]) -> Path:
        path = self.out_dir / name
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns, restval="", extrasaction="raise")
            w.writeheader()
            for row in rows:
                w.writerow({k: _cell(v) for k, v in row.items()})
        return path

    def _write_embeddings(self, parts: list[dict[str, Any]], items: list[dict[str, Any]]
                          ) -> list[dict[str, Any]]:
        """``embeddings.h5``: (N, C) vectors, each row's recording index and start sample;
        the window rows' ``embedding_row`` becomes the row in that file."""
        import h5py

        vectors, owner, starts, offset, names = [], [], [], 0, []
        by_name = {}
        for p in parts:
            if p["row"]["status"] != "ok":
                continue
            arr = np.load(self.part_path(p["name"]).with_suffix(".npy"))
            by_name[p["name"]] = offset
            names.append(p["name"])
            vectors.append(arr)
            rows = [it for it in p["items"] if "embedding_row" in it]
            owner.extend([len(names) - 1] * len(rows))
            starts.extend(it["start_sample"] for it in rows)
            offset += len(arr)
        out = []
        for item in items:
            if "embedding_row" in item:
                item = {**item, "embedding_row": item["embedding_row"] + by_name[item["recording"]]}
            out.append(item)
        dim = vectors[0].shape[1] if vectors else 0
        with atomic_path(self.out_dir / EMBEDDINGS) as tmp, h5py.File(tmp, "w") as f:
            f.create_dataset("embeddings", data=np.concatenate(vectors) if vectors
                             else np.zeros((0, dim), np.float32))
            f.create_dataset("recording_index", data=np.asarray(owner, dtype=np.int64))
            f.create_dataset("start_sample", data=np.asarray(starts, dtype=np.int64))
            f.create_dataset("recordings", data=np.asarray(names, dtype=object),
                             dtype=h5py.string_dtype())
        return out


@dataclass
class Embeddings:
    """The vectors of one ``predict mode=embed`` folder: a row per window."""

    vectors: np.ndarray  # (N, C) float32
    recording: list[str]  # the recording of each row
    start_sample: np.ndarray  # (N,) the window's start at the modality rate
    run: dict[str, Any]  # predict_run.json: checkpoint, its sha256, mode settings



def read_embeddings(folder: str | Path) -> Embeddings:
    """The vectors of ``folder`` (the ``out_dir`` of ``predict mode=embed``).

    Raises:
        InputError: ``folder`` is no finished ``mode=embed`` run.
    """
    import h5py

    folder = Path(folder)
    manifest, path = folder / MANIFEST, folder / EMBEDDINGS
    if not manifest.is_file() or not path.is_file():
        raise InputError(folder, "holds no predict_run.json and embeddings.h5: give the out_dir "
                                 "of `python -m heartgpt.predict mode=embed ...`")
    run = json.loads(manifest.read_text())
    mode = run.get("mode", {}).get("name")
    if mode != "embed":
        raise InputError(folder, f"holds predictions of mode={mode}, not embeddings: run "
                                 "`python -m heartgpt.predict mode=embed ...` into another out_dir")
    with h5py.File(path, "r") as f:
        vectors = np.asarray(f["embeddings"], dtype=np.float32)
        owner = np.asarray(f["recording_index"], dtype=np.int64)
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in f["recordings"][()]]
        starts = np.asarray(f["start_sample"], dtype=np.int64)
    return Embeddings(vectors, [names[i] for i in owner], starts, run)


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"mode": {"stride": 50}}`` -> ``{"mode.stride": 50}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _extra_columns(rows: list[dict[str, Any]], first: list[str]) -> list[str]:
    """The keys of ``rows`` not in ``first``, in the order they first appear."""
    seen = dict.fromkeys(first)
    extra = []
    for row in rows:
        for k in row:
            if k not in seen:
                seen[k] = None
                extra.append(k)
    return extra


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if not np.isfinite(value) else repr(value)
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON-able: {type(value).__name__}")
