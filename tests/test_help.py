"""`--help` of the Hydra commands: each its own short help (conf/hydra/help/), naming the
config groups that command composes and where the documentation is, not Hydra's generic page."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from command_runner import run_plan
from training_helpers import CONF_DIR

REPO = Path(__file__).resolve().parents[1]
PREDICT_ONLY = ("mode", "trust")
TRAIN_GROUPS = sorted(p.name for p in CONF_DIR.iterdir()
                      if p.is_dir() and p.name not in ("hydra", *PREDICT_ONLY))
TRAINING_ONLY = ("freeze", "callbacks", "logger", "trainer", "experiment", "debug")


COMMANDS = ("heartgpt.train", "heartgpt.prepare", "heartgpt.eval", "heartgpt.predict",
            "heartgpt.export", "heartgpt.probe", "heartgpt.calibrate")


@pytest.fixture(scope="module")
def help_text(tmp_path_factory) -> Callable[[str], str]:
    """``help_text(module)``: its ``--help``; every command's runs in one interpreter
    (``tests/command_runner.py``: torch and Lightning imported once, not once per command)."""
    results = run_plan([{"argv": [m, "--help"], "env": {}} for m in COMMANDS],
                       tmp_path_factory.mktemp("help"), cwd=REPO, env=dict(os.environ))
    texts = dict(zip(COMMANDS, results, strict=True))

    def text(module: str) -> str:
        result = texts[module]
        assert result["exit"] == 0, result["log"]
        assert "powered by Hydra" not in result["log"]  # Hydra's generic help
        return result["log"]

    return text


@pytest.fixture(scope="module")
def train_help(help_text) -> str:
    return help_text("heartgpt.train")


@pytest.fixture(scope="module")
def prepare_help(help_text) -> str:
    return help_text("heartgpt.prepare")


def _group_lines(text: str) -> dict[str, str]:
    """`  group  options  description` lines (and their continuation lines) by group."""
    lines: dict[str, str] = {}
    group = None
    for line in text.split("== Config groups", 1)[1].split("\n\n", 1)[0].splitlines()[1:]:
        m = re.match(r"  (\S+)\s", line)
        if m:
            group = m.group(1)
            lines[group] = line
        elif group:
            lines[group] += line
    return lines


def test_train_help_names_every_group_and_option_and_the_docs(train_help):
    assert "docs/training.md" in train_help
    assert "python -m heartgpt.train" in train_help
    assert "--cfg job" in train_help
    lines = _group_lines(train_help)
    assert set(lines) == {*TRAIN_GROUPS, "hydra/launcher"}
    for group in TRAIN_GROUPS:
        options = {p.stem for p in (CONF_DIR / group).glob("*.yaml")
                   if not p.stem.startswith("_")}  # `_name.yaml`: a base, not an option
        named = set(re.findall(r"[\w]+", lines[group]))
        assert options <= named, (group, options - named)
    assert "slurm" in lines["hydra/launcher"]


def test_prepare_help_names_only_its_own_groups(prepare_help):
    assert "data/README.md" in prepare_help
    assert "python -m heartgpt.prepare" in prepare_help
    assert "source=demo" in prepare_help
    assert set(_group_lines(prepare_help)) == {"modality", "paths"}
    for group in TRAINING_ONLY:
        assert not re.search(rf"\b{group}\b", prepare_help), group


@pytest.fixture(scope="module")
def eval_help(help_text) -> str:
    return help_text("heartgpt.eval")


def test_eval_help_names_its_groups_and_their_options(eval_help):
    assert "python -m heartgpt.eval checkpoint=" in eval_help
    assert "--cfg job" in eval_help and "docs/training.md" in eval_help
    lines = _group_lines(eval_help)
    assert set(lines) == {"modality", "task", "data", "trainer", "logger", "paths", "model"}
    for group, line in lines.items():
        options = {p.stem for p in (CONF_DIR / group).glob("*.yaml") if not p.stem.startswith("_")}
        assert options <= set(re.findall(r"[\w]+", line)), (group, options)
    assert "data.split" in eval_help or "split (all" in eval_help


def test_predict_help_names_its_groups_and_their_options(help_text):
    text = help_text("heartgpt.predict")
    assert "python -m heartgpt.predict checkpoint=" in text and "--cfg job" in text
    lines = _group_lines(text)
    assert set(lines) == {"mode", "modality", "trust", "trainer", "paths"}
    for group, line in lines.items():
        options = {p.stem for p in (CONF_DIR / group).glob("*.yaml") if not p.stem.startswith("_")}
        assert options <= set(re.findall(r"[\w]+", line)), (group, options)
    assert "resumes" in text


def test_export_help_names_its_group_formats_and_tolerance(help_text):
    text = help_text("heartgpt.export")
    assert "python -m heartgpt.export checkpoint=" in text and "--cfg job" in text
    assert set(_group_lines(text)) == {"paths"}
    assert "torch_export" in text and "heartgpt[onnx]" in text and "1e-5" in text
    assert "$HEARTGPT_WEIGHTS" in text  # the template's $$ came out as one dollar sign
    for group in TRAINING_ONLY:
        assert not re.search(rf"\b{group}\b", text), group


def test_probe_help_names_its_keys_and_how_to_get_embeddings(help_text):
    text = help_text("heartgpt.probe")
    assert "python -m heartgpt.probe predictions=" in text and "--cfg job" in text
    assert "python -m heartgpt.predict mode=embed" in text  # where its input comes from
    assert set(_group_lines(text)) == {"paths"}
    for key in ("labels", "target", "kind", "unit", "folds", "alpha", "out_dir"):
        assert re.search(rf"^\s+{key}\b", text, flags=re.M), key
    for group in TRAINING_ONLY:
        assert not re.search(rf"\b{group}\b", text), group


def test_calibrate_help_names_what_it_fits_and_writes(help_text):
    text = help_text("heartgpt.calibrate")
    assert "python -m heartgpt.calibrate checkpoint=" in text and "--cfg job" in text
    assert "temperature" in text and "_calibrated.ckpt" in text
    assert set(_group_lines(text)) == {"modality", "task", "data", "paths"}
