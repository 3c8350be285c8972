"""``python -m heartgpt.compare DIR``: one table of the runs under ``DIR`` (e.g. a multirun).

Every run directory below ``DIR`` (one with ``.hydra/overrides.yaml``) becomes a row: the
overrides that differ between the runs, then the test metrics of its ``test_metrics.json``
(written by ``heartgpt.train`` with ``test=true``). Prints a markdown table and writes
``DIR/comparison.csv``::

    python -m heartgpt.train -m experiment=demo_af freeze=head,last_block,full
    python -m heartgpt.compare outputs/af_ecg/multiruns/<date_time>
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from omegaconf import OmegaConf

from heartgpt.train import TEST_METRICS


def read_run(run_dir: Path) -> dict[str, str | float]:
    """``{override key: value, ..., metric: value, ...}`` of one run directory."""
    overrides = OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")
    row: dict[str, str | float] = {"run": str(run_dir)}
    for item in overrides:
        key, _, value = str(item).partition("=")
        row[key.lstrip("+~")] = value
    metrics_file = run_dir / TEST_METRICS
    if metrics_file.is_file():
        for key, value in json.loads(metrics_file.read_text()).items():
            if isinstance(value, int | float):
                row[key] = float(value)
    return row


def compare(root: str | Path) -> list[dict[str, str | float]]:
    """Rows of every run under ``root``, in directory order; writes ``root/comparison.csv``."""
    root = Path(root)
    run_dirs = sorted(p.parent.parent for p in root.rglob(".hydra/overrides.yaml"))
    if not run_dirs:
        raise FileNotFoundError(f"{root}: no run directories (.hydra/overrides.yaml) below it")
    rows = [read_run(d) for d in run_dirs]
    keys = [k for k in dict.fromkeys(k for r in rows for k in r)]
    with open(root / "comparison.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    return rows


def markdown(rows: list[dict[str, str | float]]) -> str:
    """The overrides that vary between runs and every metric, as a markdown table."""
    keys = list(dict.fromkeys(k for r in rows for k in r if k != "run"))
    overrides = [k for k in keys if not all(isinstance(r.get(k), float) for r in rows if k in r)]
    varying = [k for k in overrides if len({str(r.get(k)) for r in rows}) > 1] or overrides
    metrics = [k for k in keys if k not in overrides]
    header = ["run", *varying, *metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [Path(str(r["run"])).name, *(str(r.get(k, "")) for k in varying),
                 *(f"{r[k]:.4f}" if k in r else "" for k in metrics)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="a multirun directory (or any folder of run directories)")
    args = parser.parse_args(argv)
    print(markdown(compare(args.root)))


if __name__ == "__main__":
    main()
