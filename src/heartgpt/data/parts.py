"""prepare across machines: each ``part`` of ``nparts`` takes a fixed slice of the inputs and
writes a shard set of its own; ``merge`` joins the parts into one validated set.

    python -m heartgpt.prepare input=... out_dir=D part=0 nparts=4   # SLURM array task 0 ...
    python -m heartgpt.prepare input=... out_dir=D part=3 nparts=4   # ... task 3
    python -m heartgpt.prepare out_dir=D merge=true                  # once all four are done

Part ``k`` writes ``D/part-0000k-of-00004/`` (a complete set, resumable like any prepare). Part
``k`` takes the ``k``-th contiguous block of the sorted inputs, so the merged rows are those of
one run over every input, in the same order. Merging links (or copies) the parts' shards into
``D``, joins their row indexes and summaries, commits them as one set, and then removes the
parts; until the manifest is written ``D`` does not validate and the parts are untouched.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from heartgpt.data.row_index import RowIndex
from heartgpt.data.shard_writer import commit_shard_set
from heartgpt.data.shards import (
    SUMMARY_NAME,
    WORK_DIR,
    Manifest,
    ShardError,
    ShardInfo,
    validate_shard_dir,
)

T = TypeVar("T")
_PART_DIR = re.compile(r"^part-(\d{5})-of-(\d{5})$")


def part_slice(items: Sequence[T], part: int, nparts: int) -> list[T]:
    """The ``part``-th of ``nparts`` contiguous, near-equal blocks of ``items``."""
    if nparts < 1 or not 0 <= part < nparts:
        raise ValueError(f"part must be in 0..{nparts - 1} (nparts={nparts}), got {part}")
    n = len(items)
    return list(items[part * n // nparts : (part + 1) * n // nparts])


def part_dir(out_dir: str | os.PathLike, part: int, nparts: int) -> Path:
    """Where part ``part`` of ``nparts`` writes its shard set."""
    return Path(out_dir) / f"part-{part:05d}-of-{nparts:05d}"


def find_parts(out_dir: str | os.PathLike) -> list[Path]:
    """The part folders of ``out_dir``, in part order; all of one ``nparts``, none missing."""
    out_dir = Path(out_dir)
    found = sorted(p for p in out_dir.iterdir() if p.is_dir() and _PART_DIR.match(p.name)) \
        if out_dir.is_dir() else []
    if not found:
        raise ShardError(f"{out_dir}: no part-K-of-N folders to merge (run prepare with "
                         "part=K nparts=N first)")
    counts = {int(_PART_DIR.match(p.name).group(2)) for p in found}  # type: ignore[union-attr]
    if len(counts) > 1:
        raise ShardError(f"{out_dir}: parts of different nparts {sorted(counts)}: remove the "
                         "stale ones")
    nparts = counts.pop()
    have = {int(_PART_DIR.match(p.name).group(1)) for p in found}  # type: ignore[union-attr]
    missing = sorted(set(range(nparts)) - have)
    if missing:
        raise ShardError(f"{out_dir}: part(s) {missing} of {nparts} missing: run prepare "
                         f"part={missing[0]} nparts={nparts}")
    return [part_dir(out_dir, k, nparts) for k in range(nparts)]


def _merged_summary(out_dir: Path, parts: list[Path], index: RowIndex, shards: int) -> dict[str, Any]:
    summaries = []
    for p in parts:
        try:
            summaries.append(json.loads((p / SUMMARY_NAME).read_text(encoding="utf-8")))
        except (OSError, ValueError) as e:
            raise ShardError(f"{p / SUMMARY_NAME}: unreadable ({e})") from e
    total: dict[str, Any] = {"out_dir": str(out_dir), "subjects": index.num_subjects,
                             "shards": shards, "parts": len(parts)}
    for key in ("records_found", "records_read", "segments_written"):
        total[key] = sum(int(s[key]) for s in summaries)
    for key in ("records_skipped", "segments_skipped", "label_counts"):
        c: Counter[str] = Counter()
        for s in summaries:
            c.update(s.get(key) or {})
        total[key] = dict(sorted(c.items())) or ({} if key != "label_counts" else None)
    for key in ("skipped", "warnings"):
        total[key] = [x for s in summaries for x in s[key]]
    return total


def merge_parts(out_dir: str | os.PathLike) -> Manifest:
    """Join the parts of ``out_dir`` into one shard set there (see the module docstring)."""
    out_dir = Path(out_dir)
    parts = find_parts(out_dir)
    manifests = [validate_shard_dir(p) for p in parts]  # each must be complete
    meta = manifests[0].meta
    for p, m in zip(parts[1:], manifests[1:], strict=True):
        if m.meta != meta:
            raise ShardError(f"{p}: written with other settings than {parts[0].name} "
                             f"({m.meta} vs {meta}): re-run it with the same ones")
    work = out_dir / WORK_DIR
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    staged: list[tuple[Path, ShardInfo]] = []
    for m in manifests:
        for path, info in zip(m.paths, m.shards, strict=True):
            name = f"shard-{len(staged):05d}.h5"
            target = work / name
            try:
                os.link(path, target)
            except OSError:  # another file system, or no hard links: copy
                shutil.copyfile(path, target)
            staged.append((target, dataclasses.replace(info, file=name)))
    index = RowIndex.concatenate([m.row_index for m in manifests])
    summary = _merged_summary(out_dir, parts, index, len(staged))
    manifest = commit_shard_set(out_dir, meta, staged, index, summary)
    shutil.rmtree(work, ignore_errors=True)
    for p in parts:
        shutil.rmtree(p)
    return manifest
