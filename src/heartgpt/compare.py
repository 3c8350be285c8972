"""``python -m heartgpt.compare DIR``: one table of the runs under ``DIR`` (e.g. a multirun).

Every run directory below ``DIR`` (one with ``.hydra/overrides.yaml``) becomes a row: its
experiment, the overrides that differ between the runs, then the test metrics of its
``test_metrics.json`` (written by ``heartgpt.train`` with ``test=true``). A run whose config
states ``expect`` (the demo experiments do) is checked against it:

- ``{min: x}`` / ``{max: x}``: the metric is at least / at most ``x``;
- ``{at_least: <experiment>, minus: d}``: at least the same metric of that experiment's run in
  the table, less ``d`` (LoRA's AUROC within 0.02 of ``freeze=last_block``'s, or better);
- ``{below: <experiment>}``: smaller than that run's (e.g. ``trainable_params``).

Prints a markdown table (with ``expected`` and ``met`` columns when any run expects something)
and writes ``DIR/comparison.csv``; ``--check`` exits 1 when an expectation is not met::

    python -m heartgpt.train -m experiment=demo_af freeze=head,last_block,full
    python -m heartgpt.compare outputs/af_ecg/multiruns/<date_time>
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from heartgpt.training.result_files import TEST_METRICS

Row = dict[str, Any]


def read_run(run_dir: Path) -> Row:
    """``{run, experiment, override key: value, ..., metric: value, ...}`` of one run directory,
    its ``expect`` (if any) under ``_expect``."""
    hydra_dir = run_dir / ".hydra"
    row: Row = {"run": str(run_dir)}
    choices = OmegaConf.select(OmegaConf.load(hydra_dir / "hydra.yaml"),
                               "hydra.runtime.choices", default={}) \
        if (hydra_dir / "hydra.yaml").is_file() else {}
    if choices and choices.get("experiment"):
        row["experiment"] = str(choices["experiment"])
    for item in OmegaConf.load(hydra_dir / "overrides.yaml"):
        key, _, value = str(item).partition("=")
        if key.lstrip("+~") != "experiment":
            row[key.lstrip("+~")] = value
    metrics_file = run_dir / TEST_METRICS
    if metrics_file.is_file():
        for key, value in json.loads(metrics_file.read_text()).items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                row[key] = float(value)
    config = hydra_dir / "config.yaml"
    expect = OmegaConf.select(OmegaConf.load(config), "expect") if config.is_file() else None
    if expect:
        row["_expect"] = OmegaConf.to_container(expect)
    return row


def _check(row: Row, metric: str, rule: dict[str, Any], rows: list[Row]) -> tuple[str, bool]:
    """(what was expected, whether the row meets it)."""
    value = row.get(metric)
    if "min" in rule or "max" in rule:
        bound = float(rule.get("min", rule.get("max")))
        op = ">=" if "min" in rule else "<="
        met = value is not None and (value >= bound if op == ">=" else value <= bound)
        return f"{metric} {op} {bound:g}", met
    other_name = rule.get("at_least") or rule.get("below")
    others = [r for r in rows if r.get("experiment") == other_name]
    if len(others) != 1:
        return f"{metric} vs {other_name}: {len(others)} runs of it in the table", False
    other = others[0].get(metric)
    if "at_least" in rule:
        minus = float(rule.get("minus", 0.0))
        bound = None if other is None else other - minus
        met = value is not None and bound is not None and value >= bound
        shown = "?" if bound is None else f"{bound:.4g}"
        return f"{metric} >= {other_name}'s - {minus:g} ({shown})", met
    met = value is not None and other is not None and value < other
    return f"{metric} < {other_name}'s ({'?' if other is None else f'{other:g}'})", met


def check_expectations(rows: list[Row]) -> None:
    """Fill ``expected`` and ``met`` of every row that states ``_expect``."""
    for row in rows:
        rules = row.get("_expect") or {}
        if not rules:
            continue
        results = [_check(row, metric, dict(rule), rows) for metric, rule in rules.items()]
        row["expected"] = "; ".join(text for text, _ in results)
        row["met"] = "yes" if all(met for _, met in results) else "NO"


def compare(root: str | Path) -> list[Row]:
    """Rows of every run under ``root``, in directory order, expectations checked; writes
    ``root/comparison.csv``."""
    root = Path(root)
    run_dirs = sorted(p.parent.parent for p in root.rglob(".hydra/overrides.yaml"))
    if not run_dirs:
        raise FileNotFoundError(f"{root}: no run directories (.hydra/overrides.yaml) below it")
    rows = [read_run(d) for d in run_dirs]
    check_expectations(rows)
    keys = [k for k in dict.fromkeys(k for r in rows for k in r) if k != "_expect"]
    with open(root / "comparison.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return rows


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.0f}" if value.is_integer() and abs(value) >= 1000 else f"{value:.4f}"
    return "" if value is None else str(value)


def markdown(rows: list[Row]) -> str:
    """The experiment, the overrides that vary between runs, every metric and, when any run
    expects something, what it expects and whether it is met, as a markdown table."""
    keys = list(dict.fromkeys(k for r in rows for k in r
                              if k not in ("run", "_expect", "expected", "met")))
    overrides = [k for k in keys if not all(isinstance(r.get(k), float) for r in rows if k in r)]
    varying = [k for k in overrides if len({str(r.get(k)) for r in rows}) > 1] or overrides
    metrics = [k for k in keys if k not in overrides]
    checks = ["expected", "met"] if any("met" in r for r in rows) else []
    header = ["run", *varying, *metrics, *checks]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [Path(str(r["run"])).name, *(_cell(r.get(k)) for k in [*varying, *metrics, *checks])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="a multirun directory (or any folder of run directories)")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when a run does not meet what its config expects")
    args = parser.parse_args(argv)
    rows = compare(args.root)
    print(markdown(rows))
    failed = [Path(str(r["run"])).name for r in rows if r.get("met") == "NO"]
    if failed:
        print(f"expectations not met: {', '.join(failed)}", file=sys.stderr)
        if args.check:
            sys.exit(1)


if __name__ == "__main__":
    main()
