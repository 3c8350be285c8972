"""From recordings to shards: filter, resample, cut segments, tokenise, write.

``prepare_records`` runs the whole path over a list of files with a process pool and returns a
:class:`PrepareSummary`; ``segment_recording`` is the per-recording step (also used by the
synthetic demo). Records are processed in sorted order and written in that order whatever the
number of workers, so the same input always gives the same shards. A bad record is skipped and
counted by reason, never fatal.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.signal import butter, sosfiltfilt

from heartgpt.data.journal import PrepareJournal, fingerprint
from heartgpt.data.labels import read_sidecar_values
from heartgpt.data.plausibility import recording_problems
from heartgpt.data.readers import (
    read_recording,
    read_sidecar_beats,
    read_wfdb_beats,
    sidecar_path,
)
from heartgpt.data.recording import RecordError, RecordFile, Recording
from heartgpt.data.shard_writer import ShardWriter
from heartgpt.data.shards import MANIFEST_NAME, SUMMARY_NAME, WORK_DIR, Manifest, ShardMeta
from heartgpt.data.tokenizer import LEVELS, get_modality, resample, sliding_windows, tokenize_window
from heartgpt.files import write_json_atomic

# Reasons a record or segment is skipped (the summary counts them).
UNREADABLE = "unreadable"
UNSUPPORTED_FILE = "not a recording"  # a file of no supported format (RecordFile.problem)
TOO_SHORT = "too short"
NAN = "NaN/inf"
FLAT = "flat"
NO_LABEL = "no label"
NO_BEATS = "no beat annotations"
TOO_LARGE = "values too large"
BAD_FILTER = "filter"


@dataclass(frozen=True)
class SegmentSpec:
    """How records are cut, in samples at the modality rate."""

    length: int
    stride: int
    max_per_record: int | None = None  # paper ECG pre-training: 1 (first 10 s of each record)

    def __post_init__(self) -> None:
        if self.length <= 0 or self.stride <= 0:
            raise ValueError(f"segment length and stride must be positive, got {self}")


@dataclass(frozen=True)
class FilterSpec:
    """Optional Butterworth band-pass (zero-phase), applied at the recording's own rate."""

    low_hz: float | None = None
    high_hz: float | None = None
    order: int = 4


@dataclass(frozen=True)
class BeatSpec:
    """Where per-record beat sample indices come from (label_kind 'token')."""

    wfdb_extension: str | None = None  # <record>.<ext>, e.g. 'atr'
    symbols: tuple[str, ...] | None = None  # WFDB annotation symbols to keep (None: all)
    sidecar_suffix: str | None = None  # CSV beside the record, e.g. '_beats.csv'
    record_suffix: str | None = None  # part of the record file name the sidecar suffix replaces
    column: int | str | None = None  # sidecar column (None: first)
    index_base: int = 0  # 1 for one-based sample numbers (MATLAB, CapnoBase)
    tolerance: int = 0  # also mark +-tolerance samples (modality rate) around each beat


@dataclass(frozen=True)
class TargetSpec:
    """Per-position targets from a sidecar file of values at a fixed rate (label_kind 'token'
    without beats): value ``j`` describes the record's ``j/rate .. (j+1)/rate`` seconds, and
    becomes the target of tokens ``j*stride .. (j+1)*stride - 1`` at the modality rate."""

    sidecar_suffix: str | None = None  # CSV beside the record, e.g. '_hr.csv'
    record_suffix: str | None = None  # part of the record file name the sidecar suffix replaces
    column: int | str | None = None  # sidecar column (None: first)
    stride: int = 1  # tokens per value: modality rate / the values' rate
    classes: tuple[str, ...] | None = None  # class names (index order); None: numbers


@dataclass(frozen=True)
class PrepareSpec:
    """Everything a worker needs to turn one file into segments (picklable)."""

    modality: str
    label_kind: str  # 'unlabelled' | 'sequence' | 'token'
    channel: int | str
    segment: SegmentSpec
    sample_rate: float | None = None
    filter: FilterSpec = field(default_factory=FilterSpec)
    beats: BeatSpec = field(default_factory=BeatSpec)
    targets: TargetSpec = field(default_factory=TargetSpec)
    labels: dict[str, tuple[str | None, tuple[float, ...] | None]] = field(default_factory=dict)
    label_schema: dict[str, Any] | None = None  # LabelSchema.to_dict(); None: legacy binary
    dx_positive: tuple[str, ...] | None = None
    csv_decimal: str = "."  # decimal mark of CSV/text records


@dataclass
class RecordResult:
    """The segments of one record, or why it gave none."""

    name: str
    subject: str = ""
    tokens: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.uint8))  # (n, S)
    starts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (n,)
    label: float | tuple[float, ...] | None = None
    targets: np.ndarray | None = None  # (n, S // stride): uint8 classes or float32 values
    segments_skipped: Counter = field(default_factory=Counter)
    skip_reason: str | None = None
    detail: str = ""
    warnings: list[str] = field(default_factory=list)  # kept, but suspicious (rate, modality)

    def outcome(self) -> dict[str, Any]:
        """What the summary (and prepare's journal) keeps of this record: JSON, no arrays."""
        return {"name": self.name, "subject": self.subject, "rows": len(self.tokens),
                "label": self.label, "skip_reason": self.skip_reason, "detail": self.detail,
                "warnings": list(self.warnings), "segments_skipped": dict(self.segments_skipped)}


@dataclass
class PrepareSummary:
    """What a prepare run did; printed at the end and saved as ``summary.json``."""

    out_dir: str
    records_found: int = 0
    records_read: int = 0
    records_skipped: dict[str, int] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)  # record, reason, detail
    warnings: list[dict[str, str]] = field(default_factory=list)  # record, warning (kept)
    segments_written: int = 0
    segments_skipped: dict[str, int] = field(default_factory=dict)
    subjects: int = 0
    shards: int = 0
    label_counts: dict[str, int] | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------- one record


def bandpass(x: np.ndarray, rate: float, spec: FilterSpec) -> np.ndarray:
    """Zero-phase Butterworth band-/high-/low-pass per ``spec`` (no-op when both edges are None)."""
    if spec.low_hz is None and spec.high_hz is None:
        return x
    nyq = rate / 2
    for name, edge in (("low_hz", spec.low_hz), ("high_hz", spec.high_hz)):
        if edge is not None and edge >= nyq:
            raise ValueError(f"filter.{name}={edge:g} is not below the Nyquist frequency of this "
                             f"record ({nyq:g} Hz at {rate:g} Hz)")
    if spec.low_hz is not None and spec.high_hz is not None:
        sos = butter(spec.order, [spec.low_hz, spec.high_hz], btype="bandpass", fs=rate, output="sos")
    elif spec.low_hz is not None:
        sos = butter(spec.order, spec.low_hz, btype="highpass", fs=rate, output="sos")
    else:
        sos = butter(spec.order, spec.high_hz, btype="lowpass", fs=rate, output="sos")
    return sosfiltfilt(sos, x)


def _why_bad(window: np.ndarray) -> str | None:
    """NAN or FLAT when the samples cannot be tokenised for that reason, else None."""
    if not np.isfinite(window).all():
        return NAN
    if window.size == 0 or window.max() == window.min():
        return FLAT
    return None


def beat_targets(beats: np.ndarray, rate_in: float, rate_out: float, n: int, tolerance: int) -> np.ndarray:
    """A 0/1 uint8 vector of length ``n`` at ``rate_out`` with 1 at each beat (+-tolerance)."""
    pos = np.round(np.asarray(beats, dtype=np.float64) * (rate_out / rate_in)).astype(np.int64)
    out = np.zeros(n, dtype=np.uint8)
    for d in range(-tolerance, tolerance + 1):
        p = pos + d
        out[p[(p >= 0) & (p < n)]] = 1
    return out


def segment_recording(
    rec: Recording,
    modality: str,
    label_kind: str,
    segment: SegmentSpec,
    filt: FilterSpec = FilterSpec(),
    tolerance: int = 0,
    target_stride: int = 1,
) -> RecordResult:
    """Filter, resample to the modality rate, cut segments and tokenise each one.

    ``rec.subject``/``rec.label``/``rec.beats`` must already be final (label_kind 'sequence' needs a
    label, 'token' beats or ``rec.targets``: one per ``target_stride`` tokens, NaN-padded past
    their end). Segments that cannot be tokenised (NaN, flat) are dropped and counted.
    """
    res = RecordResult(name=rec.name, subject=rec.subject or rec.name, label=rec.label)
    if label_kind == "sequence" and rec.label is None:
        res.skip_reason, res.detail = NO_LABEL, "no label in the file or labels_csv"
        return res
    if label_kind == "token" and rec.beats is None and rec.targets is None:
        res.skip_reason, res.detail = NO_BEATS, "no beat annotations or target values found"
        return res
    if rec.sample_rate is None:
        raise ValueError(f"{rec.path}: unknown sampling rate")
    rate = get_modality(modality).sample_rate
    raw = np.asarray(rec.signal, dtype=np.float64).reshape(-1)
    finite = raw[np.isfinite(raw)]
    with np.errstate(over="ignore"):
        span = np.float64(finite.max()) - np.float64(finite.min()) if finite.size else 0.0
    if not np.isfinite(span):
        res.skip_reason = TOO_LARGE
        res.detail = (f"values from {finite.min():g} to {finite.max():g}: their range is beyond "
                      "float64 and cannot be scaled to tokens")
        return res
    try:
        x = bandpass(raw, rec.sample_rate, filt) if raw.size else raw  # a NaN spreads to the whole record
    except ValueError as e:
        res.skip_reason, res.detail = BAD_FILTER, str(e)
        return res
    x = resample(x, rec.sample_rate, rate) if x.size else x
    ratio = rec.sample_rate / rate
    starts = sliding_windows(x.size, segment.length, segment.stride)[: segment.max_per_record]
    if starts.size == 0:
        res.skip_reason = TOO_SHORT
        res.detail = f"{x.size} samples at {rate:g} Hz, a segment needs {segment.length}"
        return res
    targets = None
    if label_kind == "token" and rec.targets is not None:
        targets = rec.targets  # one per target_stride tokens
    elif label_kind == "token":
        targets = beat_targets(rec.beats, rec.sample_rate, rate, x.size, tolerance)
    kept, toks = [], []
    for s in starts:
        window = x[s : s + segment.length]
        # Judge NaN/flat on the recorded samples: resampling turns a flat line into tiny ripples.
        reason = _why_bad(raw[int(s * ratio) : int(np.ceil((s + segment.length) * ratio))])
        if reason is None:
            try:
                toks.append(tokenize_window(window, segment.length))
            except ValueError:  # e.g. a NaN spread by the filter or the resampler
                reason = _why_bad(window) or "invalid"
            else:
                kept.append(s)
                continue
        res.segments_skipped[reason] += 1
    if not kept:
        reason, _ = res.segments_skipped.most_common(1)[0]
        res.skip_reason, res.detail = reason, f"all {starts.size} segment(s) {reason}"
        return res
    res.starts = np.asarray(kept, dtype=np.int64)
    res.tokens = np.stack(toks).astype(np.uint8)
    if targets is not None and rec.targets is not None:
        res.targets = np.stack([_chunk_targets(targets, s // target_stride, segment.length // target_stride)
                                for s in res.starts])
    elif targets is not None:
        res.targets = np.stack([targets[s : s + segment.length] for s in res.starts])
    return res


def _chunk_targets(values: np.ndarray, first: int, n: int) -> np.ndarray:
    """``values[first : first + n]``, NaN past the end of the sidecar's values."""
    out = np.full(n, np.nan, dtype=np.float32)
    part = values[first : first + n]
    out[: len(part)] = part
    return out


def _attach_annotations(rec: Recording, rf: RecordFile, spec: PrepareSpec) -> Recording:
    """Fill subject/label/beats from labels_csv and annotation files (they win over the file)."""
    key = rf.name if rf.name in spec.labels else rf.name.rsplit("/", 1)[-1]
    subject, label = spec.labels.get(key, (None, None))
    rec.subject = subject or rec.subject
    if spec.label_schema is not None:  # labels_csv names the label columns: only they count
        rec.label = label if label is None or len(label) > 1 else label[0]
    elif label is not None:
        rec.label = label[0]
    b, t = spec.beats, spec.targets
    if spec.label_kind == "token" and t.sidecar_suffix:
        side = sidecar_path(rf.path, t.sidecar_suffix, t.record_suffix)
        rec.targets = read_sidecar_values(side, t.column, t.classes) if side.exists() else None
    elif spec.label_kind == "token":
        if b.wfdb_extension and rf.format == "wfdb":
            ann = rf.path.with_suffix("." + b.wfdb_extension)
            rec.beats = read_wfdb_beats(rf.path, b.wfdb_extension, b.symbols) if ann.exists() else None
        elif b.sidecar_suffix:
            side = sidecar_path(rf.path, b.sidecar_suffix, b.record_suffix)
            rec.beats = read_sidecar_beats(side, b.column, b.index_base) if side.exists() else None
    return rec


def process_file(rf: RecordFile, spec: PrepareSpec) -> RecordResult:
    """Read one file and segment it; any error reading it becomes an 'unreadable' skip, and
    a signal that looks like another modality or a wrong rate is kept with a warning."""
    if rf.problem is not None:  # listed so that it is reported, never read
        return RecordResult(name=rf.name, skip_reason=UNSUPPORTED_FILE, detail=rf.problem)
    try:
        rec = read_recording(rf, spec.channel, spec.sample_rate, spec.dx_positive, spec.csv_decimal)
        rec = _attach_annotations(rec, rf, spec)
    except RecordError as e:  # one bad file must never abort the run
        return RecordResult(name=rf.name, skip_reason=UNREADABLE, detail=e.problem)
    except Exception as e:
        return RecordResult(name=rf.name, skip_reason=UNREADABLE, detail=f"{type(e).__name__}: {e}")
    res = segment_recording(rec, spec.modality, spec.label_kind, spec.segment, spec.filter,
                            spec.beats.tolerance, spec.targets.stride)
    if not res.skip_reason:
        res.warnings = recording_problems(rec.signal, rec.sample_rate, spec.modality).warnings()
    return res


_WORKER_SPEC: PrepareSpec | None = None  # set once per worker process (not per record)


def _init_worker(spec: PrepareSpec) -> None:
    global _WORKER_SPEC
    _WORKER_SPEC = spec


def _work(rf: RecordFile) -> RecordResult:
    assert _WORKER_SPEC is not None
    return process_file(rf, _WORKER_SPEC)


# --------------------------------------------------------------------------------- many records


def tokenizer_settings(spec: PrepareSpec) -> dict[str, Any]:
    """What produced the tokens, stored in every shard's ``tokenizer`` attribute."""
    return {
        "method": "minmax-per-segment",
        "levels": LEVELS,
        "rounding": "numpy.round (half to even)",
        "resample": "scipy.signal.resample_poly",
        "filter": asdict(spec.filter),
        "channel": spec.channel,
        "segment_stride": spec.segment.stride,
        "max_per_record": spec.segment.max_per_record,
        "beat_tolerance": spec.beats.tolerance if spec.label_kind == "token" else None,
        **({"target_values": asdict(spec.targets)} if spec.targets.sidecar_suffix else {}),
    }


class SummaryCounter:
    """Accumulates records' outcomes (:meth:`RecordResult.outcome`) into a :class:`PrepareSummary`."""

    def __init__(self, out_dir: Path, records_found: int, count_labels: bool = True) -> None:
        self.summary = PrepareSummary(out_dir=str(out_dir), records_found=records_found)
        self.count_labels = count_labels  # False for values: counting them makes no sense
        self._rec: Counter[str] = Counter()
        self._seg: Counter[str] = Counter()
        self._subjects: set[str] = set()
        self._labels: Counter[str] = Counter()

    def add(self, outcome: dict[str, Any]) -> None:
        name, label = outcome["name"], outcome["label"]
        self._seg.update(outcome["segments_skipped"])
        self.summary.warnings.extend({"record": name, "warning": w} for w in outcome["warnings"])
        if outcome["skip_reason"]:
            self._rec[outcome["skip_reason"]] += 1
            self.summary.skipped.append({"record": name, "reason": outcome["skip_reason"],
                                         "detail": outcome["detail"]})
            return
        n = outcome["rows"]
        self.summary.records_read += 1
        self.summary.segments_written += n
        self._subjects.add(outcome["subject"])
        if self.count_labels and isinstance(label, int | float) and float(label).is_integer():
            self._labels[str(int(label))] += n

    def finish(self, shards: int) -> PrepareSummary:
        s = self.summary
        s.records_skipped = dict(sorted(self._rec.items()))
        s.segments_skipped = dict(sorted(self._seg.items()))
        s.subjects = len(self._subjects)
        s.label_counts = dict(sorted(self._labels.items())) or None
        s.shards = shards
        return s


def write_results(
    results: Iterable[RecordResult],
    writer: ShardWriter,
    counter: SummaryCounter,
) -> None:
    """Add every record's segments to ``writer`` (in the order given) and count them."""
    for r in results:
        counter.add(r.outcome())
        add_rows(writer, r)


def add_rows(writer: ShardWriter, r: RecordResult, record: int = 0, skip: int = 0) -> None:
    """Give ``writer`` the segments of record number ``record`` from its ``skip``-th on."""
    n = len(r.tokens) - skip
    if r.skip_reason or n <= 0:
        return
    writer.add(
        r.tokens[skip:], [r.subject] * n, [r.name] * n, r.starts[skip:],
        label=None if r.label is None else np.broadcast_to(
            np.asarray(r.label, np.float32), (n, *np.shape(r.label))),
        targets=None if r.targets is None else r.targets[skip:],
        origin=(record, skip),
    )


def resolve_workers(value: int | str) -> int:
    """``num_workers`` as a count: ``"auto"`` is the number of CPUs this process may use."""
    if value != "auto":
        return int(value)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _results(files: Sequence[RecordFile], spec: PrepareSpec, num_workers: int) -> Iterator[RecordResult]:
    if num_workers <= 1 or len(files) <= 1:
        for rf in files:
            yield process_file(rf, spec)
        return
    with multiprocessing.get_context().Pool(num_workers, _init_worker, (spec,)) as pool:
        # imap keeps input order: the output does not depend on the number of workers. Eight
        # records per task: one at a time, passing tasks and results cost the main process
        # about as much as a 10-s record's work (WFDB on 2 workers: 335 -> 416 records/s).
        yield from pool.imap(_work, files, chunksize=8)


def prepare_records(
    files: Sequence[RecordFile],
    spec: PrepareSpec,
    out_dir: str | Path,
    *,
    source: str,
    rows_per_shard: int,
    num_workers: int,
    compression: str | None = None,
    progress: bool = True,
    resume: bool = True,
    synthetic: bool = False,
) -> tuple[PrepareSummary, Manifest | None]:
    """Turn ``files`` into shards under ``out_dir``; return the summary and the manifest.

    Shards are staged and journalled as they fill (:mod:`heartgpt.data.journal`): a run that
    is killed or fails keeps them, and the next run with the same inputs and settings starts
    where it stopped (``resume=False``: start afresh), with a byte-identical result.

    The manifest is None when no segment could be written (the summary says why); the
    directory then keeps whatever it held before.
    """
    from rich.console import Console
    from rich.progress import Progress

    out_dir = Path(out_dir)
    mod = get_modality(spec.modality)
    meta = ShardMeta(
        modality=mod.name, sample_rate=mod.sample_rate, vocab_size=mod.vocab_size,
        segment_length=spec.segment.length, label_kind=spec.label_kind, source=source,
        synthetic=synthetic, tokenizer=tokenizer_settings(spec), labels=spec.label_schema or {},
    )
    settings = {"spec": asdict(spec), "meta": meta.to_attrs(), "rows_per_shard": rows_per_shard,
                "compression": compression, "names": [rf.name for rf in files]}
    journal = PrepareJournal(out_dir / WORK_DIR, fingerprint(settings, [rf.path for rf in files]))
    point = journal.resume(enabled=resume)
    if point.staged:
        Console(stderr=True).print(
            f"prepare: resuming an interrupted run in {out_dir}: {len(point.staged)} shard(s), "
            f"{point.rows} rows kept; reading from record {point.record + 1} of {len(files)}",
            markup=False)
    schema = spec.label_schema
    counter = SummaryCounter(out_dir, len(files), count_labels=not schema or schema["kind"] == "class")
    for outcome in point.outcomes:
        counter.add(outcome)
    try:
        writer = ShardWriter(out_dir, meta, rows_per_shard, compression, staged=point.staged,
                             on_shard=journal.shard)
        with Progress(disable=not progress, transient=True) as bar:
            task = bar.add_task(f"prepare {mod.name} -> {out_dir}", total=len(files),
                                completed=point.record)
            try:
                todo = files[point.record:]
                for i, r in enumerate(_results(todo, spec, num_workers), start=point.record):
                    outcome = r.outcome()
                    journal.record(i, outcome)
                    counter.add(outcome)
                    add_rows(writer, r, i, point.skip_rows if i == point.record else 0)
                    bar.advance(task)
            except BaseException:
                writer.abort()  # keeps what is staged for the next run
                raise
        if counter.summary.segments_written == 0:
            writer.discard()
            summary = counter.finish(0)
            if not (out_dir / MANIFEST_NAME).exists():  # never overwrite a previous set's summary
                out_dir.mkdir(parents=True, exist_ok=True)
                write_json_atomic(out_dir / SUMMARY_NAME, summary.to_json())
            return summary, None
        summary = counter.finish(writer.pending_shards)
        manifest = writer.commit(summary.to_json())
    finally:
        journal.close()
    return summary, manifest
