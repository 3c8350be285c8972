"""The work of ``python -m heartgpt.prepare``: recordings (or the synthetic demo) -> tokenised
HDF5 shards, from a composed ``conf/prepare.yaml``.

:func:`prepare` maps the config onto :mod:`heartgpt.data` (:func:`prepare_spec`), runs it and
prints the summary; ``source=demo`` builds the SYNTHETIC demo (:func:`build_demo_sets`: the
classic shard sets and the targets demo's recordings prepared as a user's would be), which
``train`` also calls when a run names demo shards that are not built yet.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from heartgpt.data.demo import NATIVE_RATE
from heartgpt.data.demo_targets import HR_SECONDS, RHYTHMS, TARGETS_SOURCE, write_target_recordings
from heartgpt.data.discovery import list_inputs
from heartgpt.data.labels import LabelSchema, LabelsError, read_labels_csv
from heartgpt.data.parts import merge_parts, part_dir, part_slice
from heartgpt.data.pipeline import (
    BeatSpec,
    FilterSpec,
    PrepareSpec,
    PrepareSummary,
    SegmentSpec,
    TargetSpec,
    prepare_records,
    resolve_workers,
)
from heartgpt.data.shards import MANIFEST_NAME, ShardError
from heartgpt.data.tokenizer import get_modality
from heartgpt.errors import ConfigError


def segment_spec(cfg: DictConfig, rate: float) -> SegmentSpec:
    """Segment length/stride in samples at ``rate`` from ``cfg.segment``."""
    seg = cfg.segment
    length = round(seg.seconds * rate) if seg.seconds is not None else int(seg.samples)
    if seg.stride_seconds is not None:
        stride = round(seg.stride_seconds * rate)
    elif seg.stride_samples is not None:
        stride = int(seg.stride_samples)
    else:
        stride = length
    return SegmentSpec(length, stride, seg.max_per_record)


def prepare_spec(cfg: DictConfig) -> PrepareSpec:
    """The picklable per-record settings of a ``source=files`` run."""
    mod = get_modality(cfg.modality.name)
    ann = cfg.annotations
    segment = segment_spec(cfg, mod.sample_rate)
    labels, schema = _labels(cfg)
    targets = _target_spec(cfg, mod.sample_rate, segment)
    if targets.sidecar_suffix:
        t = cfg.targets
        classes = tuple(str(c) for c in t.classes) if t.classes else None
        schema = LabelSchema(names=(str(t.name),), kind="class" if classes else "value",
                             classes=classes, stride=targets.stride)
    return PrepareSpec(
        modality=mod.name,
        label_kind=cfg.label_kind,
        channel=cfg.channel,
        sample_rate=cfg.sample_rate,
        segment=segment,
        filter=FilterSpec(cfg.filter.low_hz, cfg.filter.high_hz, cfg.filter.order),
        beats=BeatSpec(
            wfdb_extension=ann.wfdb_extension,
            symbols=tuple(ann.symbols) if ann.symbols else None,
            sidecar_suffix=ann.sidecar_suffix,
            record_suffix=ann.record_suffix,
            column=ann.column,
            index_base=ann.index_base,
            tolerance=ann.tolerance,
        ),
        targets=targets,
        labels=labels,
        label_schema=None if schema is None or cfg.label_kind == "unlabelled" else schema.to_dict(),
        dx_positive=tuple(str(c) for c in cfg.dx_positive) if cfg.dx_positive else None,
        csv_decimal=str(cfg.csv_decimal),
    )


def _labels(cfg: DictConfig) -> tuple[dict, LabelSchema | None]:
    """``labels_csv`` read with ``label_columns`` / ``label_type`` / ``classes``."""
    if not cfg.labels_csv:
        if cfg.label_columns:
            raise ConfigError("label_columns", "needs labels_csv=<the CSV holding them>")
        return {}, None
    columns = list(cfg.label_columns) if cfg.label_columns else None
    classes = [str(c) for c in cfg.classes] if cfg.classes else None
    try:
        labels, schema = read_labels_csv(cfg.labels_csv, columns, cfg.label_type, classes)
    except LabelsError as e:
        raise ConfigError("labels_csv", str(e)) from None
    if cfg.label_kind == "sequence" and schema is None:
        raise ConfigError("label_columns", f"{cfg.labels_csv} has no `label` column: name the "
                          "label column(s), e.g. label_columns=[sbp,dbp]")
    return labels, schema


def _target_spec(cfg: DictConfig, rate: float, segment: SegmentSpec) -> TargetSpec:
    """Per-position values from sidecar files (``targets.*``), one every ``rate / targets.rate``
    tokens; the segment stride must keep whole chunks."""
    t = cfg.targets
    if not t.sidecar_suffix:
        return TargetSpec()
    if cfg.label_kind != "token":
        raise ConfigError("targets", "per-position targets need label_kind=token")
    if not t.rate or t.rate <= 0:
        raise ConfigError("targets.rate", "not given: the values' rate in Hz, e.g. 0.5 (one every 2 s)")
    stride = rate / float(t.rate)
    if abs(stride - round(stride)) > 1e-9 or round(stride) < 1:
        raise ConfigError("targets.rate", f"{t.rate} Hz does not divide the {rate:g} Hz token rate "
                          "into whole tokens per value")
    stride = round(stride)
    if segment.stride % stride:
        raise ConfigError("segment", f"stride {segment.stride} must be a multiple of the {stride} "
                          "tokens of one target value (each segment starts at a value's start)")
    return TargetSpec(sidecar_suffix=str(t.sidecar_suffix), record_suffix=t.record_suffix,
                      column=t.column, stride=stride,
                      classes=tuple(str(c) for c in t.classes) if t.classes else None)


def print_summary(summary: PrepareSummary, title: str, left_out: str | None = None) -> None:
    """The end-of-run table: records read, segments written, what was skipped and why (files
    of no supported format are skipped as 'not a recording'); ``left_out``: one line on the
    files left out on purpose (hidden, outputs, ...)."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title, show_header=False)
    t.add_row("records found", str(summary.records_found))
    t.add_row("records read", str(summary.records_read))
    if summary.warnings:
        t.add_row("records with warnings", str(len({w["record"] for w in summary.warnings})))
    for reason, n in summary.records_skipped.items():
        t.add_row(f"records skipped: {reason}", str(n))
    t.add_row("segments written", str(summary.segments_written))
    for reason, n in summary.segments_skipped.items():
        t.add_row(f"segments skipped: {reason}", str(n))
    t.add_row("subjects", str(summary.subjects))
    if summary.label_counts:
        t.add_row("label counts", ", ".join(f"{k}: {v}" for k, v in summary.label_counts.items()))
    t.add_row("shards", f"{summary.shards} in {summary.out_dir}")
    console = Console()
    console.print(t)
    if left_out:
        console.print(f"  {left_out}", markup=False)
    for s in summary.skipped[:20]:
        console.print(f"  skipped {s['record']}: {s['reason']} ({s['detail']})", markup=False)
    if len(summary.skipped) > 20:
        console.print(f"  ... {len(summary.skipped) - 20} more in {summary.out_dir}/summary.json")
    for w in summary.warnings[:20]:
        console.print(f"  warning {w['record']}: {w['warning']} (kept)", markup=False)
    if len(summary.warnings) > 20:
        console.print(f"  ... {len(summary.warnings) - 20} more warnings in "
                      f"{summary.out_dir}/summary.json")


def prepare(cfg: DictConfig) -> Any:
    """Run ``prepare`` for a composed config; returns the summary (files) or the manifests (demo)."""
    if cfg.source == "demo":
        return build_demo_sets(cfg)
    if cfg.merge:
        return _merge(cfg)
    if cfg.source != "files":
        raise ConfigError("source", f"must be 'files' or 'demo', got {cfg.source!r}")
    if not cfg.input:
        raise ConfigError("input", "not given: input=<folder or glob> (or source=demo for the "
                          "synthetic demo)")
    spec = prepare_spec(cfg)
    exclude = [cfg.labels_csv] if cfg.labels_csv else []
    suffixes = [x for x in (cfg.annotations.sidecar_suffix, cfg.targets.sidecar_suffix) if x]
    inputs = list(cfg.input) if OmegaConf.is_list(cfg.input) else cfg.input
    out_dir = Path(cfg.out_dir)
    listing = list_inputs(inputs, cfg.format, exclude=exclude, exclude_suffixes=suffixes,
                          exclude_dirs=[out_dir])
    files = listing.records  # files of no supported format too: each is reported, not read
    if cfg.nparts > 1 or cfg.part is not None:
        if cfg.part is None or cfg.part >= cfg.nparts:
            raise ConfigError("part", f"must be in 0..{cfg.nparts - 1} with nparts={cfg.nparts}, "
                              f"got {cfg.part}")
        files = part_slice(files, cfg.part, cfg.nparts)
        out_dir = part_dir(out_dir, cfg.part, cfg.nparts)
    summary, manifest = prepare_records(
        files, spec, out_dir,
        source=cfg.source_description or f"{cfg.input} ({spec.modality}, channel {spec.channel})",
        rows_per_shard=cfg.rows_per_shard, num_workers=resolve_workers(cfg.num_workers),
        compression=cfg.compression, progress=cfg.progress, resume=cfg.resume,
        synthetic=bool(cfg.synthetic),
    )
    print_summary(summary, f"prepare {spec.modality} {spec.label_kind}: {cfg.input}",
                  listing.note())
    if manifest is None:
        kept = (" (the shard set already there is unchanged)"
                if (out_dir / MANIFEST_NAME).exists() else "")
        why = "; ".join(f"{s['record']}: {s['reason']} ({s['detail']})" for s in summary.skipped[:2])
        more = f"; {len(summary.skipped) - 2} more above" if len(summary.skipped) > 2 else ""
        raise ShardError(f"{out_dir}: no segment could be written from "
                         f"{summary.records_found} record(s){kept}: "
                         f"{why or 'no recordings found'}{more}")
    return summary


def _merge(cfg: DictConfig) -> Any:
    """``merge=true``: join ``<out_dir>/part-*-of-N`` into one shard set in ``out_dir``."""
    from rich.console import Console

    manifest = merge_parts(cfg.out_dir)
    Console().print(f"merged {len(manifest.shards)} shards ({manifest.total_rows} segments, "
                    f"{manifest.num_subjects} subjects) into {manifest.directory}", markup=False)
    return manifest


# The targets demo's shard sets: prepare overrides over data/demo/<modality>/recordings, the
# same settings a user's recordings with a labels CSV and per-2-s sidecars would take.
DEMO_TARGET_SETS: dict[str, dict[str, Any]] = {
    "hr": {"label_kind": "sequence", "label_columns": ["hr_bpm"], "label_type": "value"},
    "rhythm": {"label_kind": "sequence", "label_columns": ["rhythm"], "label_type": "class",
               "classes": list(RHYTHMS)},
    "hr_tag": {"label_kind": "token", "targets.sidecar_suffix": "_hr.csv",
               "targets.record_suffix": ".npy", "targets.rate": 1 / HR_SECONDS,
               "targets.name": "hr_bpm", "segment.stride_samples": 1000},
}


def build_demo_sets(cfg: DictConfig) -> dict[str, dict[str, Any]]:
    """The SYNTHETIC demo's shard sets of ``cfg.demo.sets`` (``classic``: pretrain, af, beats;
    ``targets``: recordings prepared into hr, rhythm, hr_tag) for ``cfg.demo.modalities``;
    returns ``{modality: {set: manifest}}``."""
    from rich.console import Console

    from heartgpt.data.demo import build_demo_all

    d = cfg.demo
    manifests: dict[str, dict[str, Any]] = {m: {} for m in d.modalities}
    seconds = 0.0
    if "classic" in d.sets:
        manifests, seconds = build_demo_all(
            cfg.paths.data_dir, list(d.modalities), subjects=d.subjects, seconds=d.seconds,
            seed=cfg.seed, pretrain_samples=d.pretrain_samples,
            finetune_samples=d.finetune_samples, finetune_stride=d.finetune_stride,
            beat_tolerance=d.beat_tolerance, rows_per_shard=d.rows_per_shard,
        )
    console = Console()
    if "targets" in d.sets:
        t0 = time.perf_counter()
        for modality in d.modalities:
            manifests[modality].update(prepare_demo_targets(cfg, modality))
        seconds += time.perf_counter() - t0
    for modality, sets in manifests.items():
        for name, m in sets.items():
            labels = f", labels {m.label_counts}" if m.label_counts else ""
            console.print(
                f"SYNTHETIC demo {modality}/{name}: {m.total_rows} segments of "
                f"{m.meta.segment_length} tokens, {len(m.subjects)} subjects{labels} -> {m.directory}",
                markup=False,
            )
    console.print(f"demo built in {seconds:.1f} s")
    return manifests


def prepare_demo_targets(cfg: DictConfig, modality: str) -> dict[str, Any]:
    """Write the targets demo's recordings of ``modality`` (:mod:`heartgpt.data.demo_targets`)
    and prepare them as a user's would be: ``hr`` (regression), ``rhythm`` (3 classes) and
    ``hr_tag`` (heart rate every 2 s), through ``labels_csv`` and sidecar files."""
    from heartgpt.data.shards import read_manifest

    mod = get_modality(modality)
    root = Path(cfg.paths.data_dir) / "demo" / mod.name
    d = cfg.demo
    labels = write_target_recordings(root / "recordings", mod.name, subjects=d.target_subjects,
                                     records_per_subject=d.target_records, seed=cfg.seed)
    out = {}
    for name, overrides in DEMO_TARGET_SETS.items():
        run = OmegaConf.merge(cfg, {"source": "files", "modality": {
            "name": mod.name, "sample_rate": mod.sample_rate, "vocab_size": mod.vocab_size}})
        for key, value in {
            "input": str(labels.parent / "*.npy"), "format": "npy",
            "sample_rate": NATIVE_RATE[mod.name], "labels_csv": str(labels),
            "out_dir": str(root / name), "segment.samples": 500, "synthetic": True,
            "progress": False, "source_description": TARGETS_SOURCE.format(
                modality=mod.name.upper(), subjects=d.target_subjects, seed=cfg.seed),
            **overrides,
        }.items():
            OmegaConf.update(run, key, value, force_add=True)
        prepare(run)
        out[name] = read_manifest(root / name)
    return out


CLASSIC_SETS = ("pretrain", "af", "beats")


def demo_set_config(train_cfg: DictConfig, modality: str, shard_set: str) -> DictConfig | None:
    """The ``prepare`` config that builds the demo set ``shard_set`` (``hr``, ``af``, ...) of
    ``modality`` under ``train_cfg.paths.data_dir`` with ``conf/prepare.yaml``'s demo settings,
    or None when ``shard_set`` is no demo set."""
    from heartgpt.conf import CONF_DIR

    if shard_set in CLASSIC_SETS:
        sets = ["classic"]
    elif shard_set in DEMO_TARGET_SETS:
        sets = ["targets"]
    else:
        return None
    prep = OmegaConf.load(CONF_DIR / "prepare.yaml")
    del prep["defaults"]
    prep.paths = OmegaConf.create(OmegaConf.to_container(train_cfg.paths, resolve=True))
    prep.modality = OmegaConf.load(CONF_DIR / "modality" / f"{modality}.yaml")
    prep.demo.modalities = [modality]
    prep.demo.sets = sets
    return prep
