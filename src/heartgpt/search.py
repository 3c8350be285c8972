"""``python -m heartgpt.search [OVERRIDE ...]``: a hyper-parameter search that survives.

    python -m heartgpt.search experiment=demo_af hparams_search=demo_af_optuna
    python -m heartgpt.search experiment=demo_af hparams_search=demo_af_optuna search.n_trials=3

The overrides are those of ``python -m heartgpt.train``; ``hparams_search=<preset>``
(``conf/hparams_search/``) adds the ``search`` section: study, storage (SQLite), trials, space.
Every trial is a training run of the same config with the trial's parameters. The same command
again continues the study (after a crash, a kill or Ctrl-C). Needs the ``optuna`` extra
(optuna >= 3). The job: :func:`heartgpt.training.search.run_search`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

OPTUNA_EXTRA = "error: the search needs optuna >= 3: pip install 'heartgpt[optuna]'"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m heartgpt.search",
                                description=__doc__.split("\n\n")[0].split(": ", 1)[-1])
    p.add_argument("overrides", nargs="*", metavar="OVERRIDE",
                   help="Hydra overrides of conf/train.yaml, an hparams_search=<preset> among them")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """Run or continue the search; one line and exit status 1 for a known failure."""
    args = build_parser().parse_args(argv)
    try:
        import optuna
    except ImportError:
        raise SystemExit(OPTUNA_EXTRA) from None
    if int(optuna.__version__.split(".")[0]) < 3:
        raise SystemExit(f"{OPTUNA_EXTRA} (found optuna {optuna.__version__})")
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - "
                        "%(message)s", stream=sys.stdout)
    from heartgpt.errors import one_line_errors
    from heartgpt.training.search import run_search

    with one_line_errors():
        return run_search(args.overrides)


if __name__ == "__main__":
    main()
