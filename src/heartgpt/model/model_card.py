"""The ``README.md`` model card of a hub folder (:mod:`heartgpt.model.hub_folder`).

YAML front matter (``license``, ``library_name``, ``tags``, ``pipeline_tag``, ``metrics`` and a
``model-index`` with the numbers), then the sections a card has: what the model predicts, its
training data (the released data of the paper, the SYNTHETIC demo data, or the shards of a run),
evaluation (each :class:`Evaluation`: the split, the windows, the numbers of a run's
``test_metrics.json`` or an ``eval_metrics.json``), calibration and out-of-distribution scores,
intended use and limits (research only, not a medical device), how to load, and where it comes
from. Everything is read off a :class:`~heartgpt.model.checkpoint_format.LoadedModel` and the
metrics files; :func:`model_card` writes no file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from heartgpt import __version__
from heartgpt.model.checkpoint_format import LoadedModel

# The five released checkpoints and what they were trained on (shared/PAPER.md; arXiv 2407.20775).
_ECG_PT = ("PhysioNet/CinC Challenge 2020 sources cpsc_2018, cpsc_2018_extra, georgia and ptb-xl: "
           "lead I of 42,437 10-s records at 100 Hz (about 42 M tokens)")
_PPG_PT = ("Capnobase, BIDMC and a cuffless blood-pressure set at 50 Hz (about 128 M tokens; "
           "details unconfirmed)")
RELEASED_DATA = {
    "ECGPT_560k_iters": f"pre-trained for 560k iterations on {_ECG_PT}.",
    "PPGPT_500k_iters": f"pre-trained for 500k iterations on {_PPG_PT}.",
    "ECGPT_AF_1k_iters": ("ECGPT_560k_iters fine-tuned for 1,000 iterations on the MIMIC PERform "
                          "AF dataset (35 subjects, 19 in AF; ECG band-passed 1-45 Hz, 100 Hz), "
                          f"itself pre-trained on {_ECG_PT}."),
    "PPGPT_AF_1k_iters": ("PPGPT_500k_iters fine-tuned for 1,000 iterations on the MIMIC PERform "
                          "AF dataset (35 subjects, 19 in AF; PPG band-passed 1-15 Hz, 50 Hz), "
                          f"itself pre-trained on {_PPG_PT}."),
    "PPGPT_beat_5k_iters": ("PPGPT_500k_iters fine-tuned for 5,000 iterations on the MIMIC "
                            "PERform training/testing sets (PPG band-passed 1-30 Hz; label 1 at "
                            f"each beat sample), itself pre-trained on {_PPG_PT}."),
}
RELEASED_RESULTS = {  # reported by the paper, not measured here
    "ECGPT_AF_1k_iters": "AUROC 0.99 for AF (leave-one-subject-out, as reported by the paper)",
    "PPGPT_AF_1k_iters": "AUROC 0.93 for AF (leave-one-subject-out, as reported by the paper)",
    "PPGPT_beat_5k_iters": "F1 98 % for beats (as reported by the paper)",
}
SYNTHETIC_NOTE = ("**SYNTHETIC data.** This model was trained on the SYNTHETIC demo data of "
                  "heartgpt (`heartgpt.data.demo`: generated signals and labels, no recording of "
                  "a person). What it predicts, and every number below, says nothing about real "
                  "ECG/PPG.")


@dataclass
class Evaluation:
    """One set of numbers for the card: where it comes from and what it scored."""

    source: str  # 'test_metrics.json' / 'eval_metrics.json'
    split: str  # the split scored ('test', 'val', 'all', ...)
    metrics: dict[str, float | None] = field(default_factory=dict)  # name -> value (None: undefined)
    windows: int | None = None
    checkpoint: str = ""  # the file that was scored
    shard_dir: str = ""  # the shards scored (eval), or those of the run (test)


def _numbers(items: dict[str, Any], prefix: str = "") -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for key, value in items.items():
        if not key.startswith(prefix) or isinstance(value, bool):
            continue
        name = key.removeprefix(prefix)
        if isinstance(value, (int, float)) and math.isfinite(float(value)):
            out[name] = float(value)
        elif value is None:
            out[name] = None
    return out


def from_test_metrics(data: dict[str, Any], shard_dir: str = "") -> Evaluation:
    """An :class:`Evaluation` of a run's ``test_metrics.json`` (``test/<name>`` keys)."""
    metrics = _numbers(data, "test/")
    windows = metrics.pop("windows", None)
    return Evaluation("test_metrics.json", "test", metrics,
                      None if windows is None else round(windows), str(data.get("checkpoint", "")),
                      shard_dir)


def from_eval_metrics(data: dict[str, Any]) -> Evaluation:
    """An :class:`Evaluation` of an ``eval_metrics.json`` (``python -m heartgpt.eval``)."""
    metrics = _numbers(dict(data.get("metrics") or {}))
    windows = data.get("windows")
    return Evaluation("eval_metrics.json", str(data.get("split", "test")), metrics,
                      int(windows) if isinstance(windows, (int, float)) else None,
                      str(data.get("checkpoint", "")), str(data.get("shard_dir", "")))


def released_name(loaded: LoadedModel) -> str | None:
    """The released checkpoint ``loaded`` is (its file's stem), or None."""
    stem = Path(loaded.source).stem
    return stem if Path(loaded.source).suffix in (".zip", ".pth") and stem in RELEASED_DATA else None


def _predicts(loaded: LoadedModel) -> str:
    modality = (loaded.modality or "unknown modality").upper()
    head, schema = loaded.head or {}, loaded.hparams.get("label_schema") or {}
    if not loaded.head:
        return (f"A generative {modality} model: the distribution of the next token (the signal "
                f"quantised to 0..100) at every position of a window of up to "
                f"{loaded.model.config.block_size} tokens.")
    names = ", ".join(schema.get("names") or [loaded.task])
    if loaded.task == "af":
        what = "the probability that the window is in atrial fibrillation (AF), read at its end"
    elif loaded.task == "beats":
        what = "the probability of a heart beat at every sample"
    elif schema.get("kind") == "value":
        what = f"the values of {names} (in the labels' own units)"
    elif schema.get("classes"):
        what = f"{names}: one of the classes {', '.join(map(str, schema['classes']))}"
    else:
        what = f"{names} ({loaded.task})"
    per = ("per window" if head.get("kind") != "tag" else
           f"one every {head.get('stride', schema.get('stride', 1))} tokens")
    article = "An" if modality[:1] in "AEIOU" else "A"
    return (f"{article} {modality} fine-tune ({loaded.task}; head {head.get('kind', '?')} with "
            f"{head.get('outputs', '?')} output(s), pooling {head.get('pooling', 'per position')}"
            f"): {what}, {per}, from windows of up to {loaded.model.config.block_size} tokens.")


def _training_data(loaded: LoadedModel, shard_dir: str) -> str:
    released = released_name(loaded)
    if released:
        return (f"The released HeartGPT checkpoint `{released}` (Davies, Monsen, Mandic, "
                f"arXiv 2407.20775): {RELEASED_DATA[released]} Real recordings; not SYNTHETIC.")
    if loaded.synthetic:
        where = f" (shards `{shard_dir}`)" if shard_dir else ""
        return SYNTHETIC_NOTE + where
    if shard_dir:
        return f"The shards `{shard_dir}` (the run's `config.yaml`: `data.shard_dir`)."
    return "Not recorded with the checkpoint: say here what it was trained on."


def _value(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.4f}"


def _file_name(path: str) -> str:
    """A file's name; a hub folder's weights as ``<folder>/model.safetensors``."""
    p = Path(path)
    return f"{p.parent.name}/{p.name}" if p.name == "model.safetensors" and p.parent.name else p.name


def _evaluation(loaded: LoadedModel, evaluations: list[Evaluation]) -> str:
    lines: list[str] = []
    released = released_name(loaded)
    if released in RELEASED_RESULTS:
        lines += [f"Reported for the released model: {RELEASED_RESULTS[released]}.", ""]
    if not evaluations:
        lines.append("No evaluation was found with the checkpoint (a run's `test_metrics.json`, "
                     "or `eval_metrics=` of `python -m heartgpt.export`).")
    for ev in evaluations:
        scored = _file_name(ev.checkpoint) if ev.checkpoint else "this checkpoint"
        shards = f" of `{ev.shard_dir}`" if ev.shard_dir else ""
        windows = f", {ev.windows} windows" if ev.windows is not None else ""
        lines += ["", f"From `{ev.source}`: split `{ev.split}`{shards}{windows}; scored "
                  f"`{scored}`" + ("" if not ev.checkpoint or Path(ev.checkpoint).name ==
                                   Path(loaded.source).name else
                                   f" (exported: `{Path(loaded.source).name}`)") + ".", "",
                  "| metric | value |", "|---|---|"]
        lines += [f"| {name} | {_value(v)} |" for name, v in sorted(ev.metrics.items())]
    if loaded.synthetic:
        lines += ["", "These numbers are of SYNTHETIC data: they say nothing about real ECG/PPG."]
    return "\n".join(lines).strip()


def _trust(loaded: LoadedModel) -> str:
    parts = []
    cal = loaded.calibration
    if cal is not None:
        parts.append(f"Calibration: temperature {cal.temperature:.4g} ({cal.kind}) fitted on "
                     f"{cal.windows} `{cal.split}` windows (NLL {cal.nll_before:.4f} -> "
                     f"{cal.nll_after:.4f}); stored in `config.json`.")
    ref = loaded.ood_reference
    if ref is not None:
        parts.append(f"Out-of-distribution score: a Mahalanobis reference of {ref.windows} "
                     f"`{ref.split}` windows ({ref.pooling} pooling; threshold at the "
                     f"{100 * ref.threshold_level:.0f}% quantile); stored in `trust.json`.")
    return "\n\n".join(parts) or "None stored (`python -m heartgpt.calibrate` fits them)."


def front_matter(loaded: LoadedModel, evaluations: list[Evaluation], license: str,
                 name: str) -> dict[str, Any]:
    """The card's YAML metadata (the Hugging Face model card fields); ``name``: the model's."""
    tags = ["heartgpt", "time-series", "gpt",
            *([loaded.modality] if loaded.modality else []),
            *(["atrial-fibrillation"] if loaded.task == "af" else []),
            *(["synthetic-data"] if loaded.synthetic else [])]
    if loaded.task not in ("pretrain", "af"):
        tags.append(loaded.task)
    meta: dict[str, Any] = {"license": license, "library_name": "heartgpt", "tags": tags}
    names = sorted({name for ev in evaluations for name in ev.metrics})
    if names:
        meta["metrics"] = names
        meta["model-index"] = [{
            "name": name,
            "results": [{
                "task": {"type": loaded.task},
                "dataset": {"name": ("SYNTHETIC demo data" if loaded.synthetic else
                                     (Path(ev.shard_dir).name or "held-out data")),
                            "type": ev.shard_dir or "local", "split": ev.split},
                "metrics": [{"type": n, "name": f"{ev.split}/{n}", "value": v}
                            for n, v in sorted(ev.metrics.items()) if v is not None],
            } for ev in evaluations]}]
    return meta


def model_card(loaded: LoadedModel, evaluations: list[Evaluation], license: str, name: str,
               shard_dir: str = "") -> str:
    """The ``README.md`` of ``loaded``'s hub folder. ``evaluations``: its numbers (a run's test,
    an eval); ``license``: the card's licence id (the released weights: mit); ``name``: the
    model's (the folder's); ``shard_dir``: what the run trained on, when known."""
    meta = yaml.safe_dump(front_matter(loaded, evaluations, license, name), sort_keys=False,
                          allow_unicode=True).strip()
    synthetic = f"\n{SYNTHETIC_NOTE}\n" if loaded.synthetic else ""
    sections = [
        f"---\n{meta}\n---\n\n# {name}\n{synthetic}",
        f"A HeartGPT model ({(loaded.modality or '?').upper()}, task `{loaded.task}`), exported "
        f"by heartgpt {__version__} from `{Path(loaded.source).name}`.",
        f"## What it predicts\n\n{_predicts(loaded)}",
        f"## Training data\n\n{_training_data(loaded, shard_dir)}",
        f"## Evaluation\n\n{_evaluation(loaded, evaluations)}",
        f"## Calibration and out-of-distribution scores\n\n{_trust(loaded)}",
        "## Intended use and limits\n\nFor research on ECG/PPG signals only. **Not a medical "
        "device**: it is not cleared or approved for diagnosis, screening or any clinical "
        "decision, and must not be used for one. Its outputs depend on the recordings being "
        "like those it was trained on (sampling rate, filtering, placement); check the "
        "out-of-distribution score where one is stored, and validate on your own data.",
        "## How to load\n\n```bash\npip install heartgpt\nhuggingface-cli download <user>/<repo> "
        "--local-dir model\n```\n\n```python\nimport heartgpt\n\nloaded = "
        "heartgpt.load_model(\"model\")  # this folder: config.json + model.safetensors\n"
        "logits = loaded.model(tokens)  # int64 tokens (batch, time) -> logits\n```\n\nEvery "
        "heartgpt command takes the folder as `checkpoint=`, e.g. `python -m heartgpt.predict "
        "checkpoint=model inputs=recording.csv`.",
    ]
    return "\n\n".join(s.strip() for s in sections) + "\n"
