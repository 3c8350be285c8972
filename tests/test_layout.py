"""The package as a user meets it: every command answers --help, the public API, the config
tree found without a symlink (also from a built wheel), renamed keys that say their new name,
atomic writes, and shards written before the renames."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

import heartgpt
from heartgpt.data.shard_writer import ShardWriter
from heartgpt.data.shards import ShardMeta, read_manifest, validate_shard_dir
from heartgpt.files import atomic_path, sha256_file, write_text_atomic
from heartgpt.training.renamed_keys import (
    PREPARE_RENAMES,
    TRAIN_RENAMES,
    RenamedKeyError,
    check_config,
    check_overrides,
)

REPO = Path(__file__).resolve().parents[1]
ARGPARSE_COMMANDS = ["generate", "screen_af", "detect_beats", "interpret", "cv", "compare", "app"]


def _run(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600,
                          cwd=cwd, env=env)


@pytest.mark.parametrize("command", ARGPARSE_COMMANDS)
def test_every_command_answers_help(command, capsys):
    """The argparse commands (the Hydra ones: test_help.py) print their usage and exit 0."""
    import importlib

    module = importlib.import_module(f"heartgpt.{command}" if command != "app"
                                     else "heartgpt.app.__main__")
    with pytest.raises(SystemExit) as info:
        module.main(["--help"])
    assert info.value.code == 0
    assert f"heartgpt.{command}" in capsys.readouterr().out or command in ("cv", "compare")


def test_public_api_is_lazy_and_loads_a_model(tmp_path):
    done = _run(["-c", "import sys, heartgpt; print('torch' in sys.modules, sorted(heartgpt.__all__))"],
                tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("False")  # `import heartgpt` alone does not import torch
    model = heartgpt.GPT(heartgpt.GPTConfig(block_size=16, n_embd=16, n_head=2, n_layer=1))
    path = heartgpt.save_safetensors(model, tmp_path / "m.safetensors", "ecg")
    loaded = heartgpt.load_model(path)
    assert loaded.modality == "ecg" and loaded.model.config == model.config
    tokens = heartgpt.tokenize(np.sin(np.linspace(0, 6, 16)))
    assert tokens.min() == 0 and tokens.max() == 100 and tokens.dtype == np.int64
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = heartgpt.nope


def test_load_model_by_bare_released_name(weights_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("HEARTGPT_WEIGHTS", str(weights_dir))
    monkeypatch.chdir(tmp_path)
    loaded = heartgpt.load_model("ECGPT_560k_iters.zip")
    assert (loaded.modality, loaded.task, loaded.model.config.vocab_size) == ("ecg", "pretrain", 101)


def test_config_tree_is_the_top_level_conf_folder():
    from heartgpt.conf import CONF_DIR

    assert (REPO / "conf").resolve() == CONF_DIR
    assert not (REPO / "src" / "heartgpt" / "conf").exists()  # no symlink, no copy


@pytest.mark.slow
def test_wheel_carries_the_config_tree_and_runs(tmp_path):
    """A wheel built from the checkout holds conf/ as heartgpt/conf and its commands compose
    their configs from it, run from a folder outside the checkout."""
    source_tree = tmp_path / "checkout"  # a clean copy: no build/ left by an earlier build
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for part in ("src", "conf"):
        shutil.copytree(REPO / part, source_tree / part, ignore=skip)
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / part, source_tree / part)
    wheel_dir = tmp_path / "wheel"
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "-w", str(wheel_dir), str(source_tree)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (wheel,) = wheel_dir.glob("heartgpt-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "heartgpt/conf/train.yaml" in names and "heartgpt/conf/task/af.yaml" in names
    assert "heartgpt/conf/__init__.py" in names
    packages = {n.rsplit("/", 1)[0].replace("/", ".") for n in names if n.endswith("__init__.py")}
    source = {str(p.parent.relative_to(REPO / "src")).replace(os.sep, ".")
              for p in (REPO / "src" / "heartgpt").rglob("__init__.py")}
    assert source | {"heartgpt.conf"} <= packages, "a package is missing from pyproject's list"
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {**os.environ, "PYTHONPATH": str(site), "WANDB_MODE": "offline"}
    work = tmp_path / "elsewhere"
    work.mkdir()
    probe = _run(["-c", "import heartgpt.conf; print(heartgpt.conf.CONF_DIR)"], work, env)
    assert probe.stdout.strip() == str((site / "heartgpt" / "conf").resolve()), probe.stderr
    train = _run(["-m", "heartgpt.train", "experiment=demo_af", "--cfg", "job"], work, env)
    assert train.returncode == 0, train.stderr
    assert "heartgpt.training.finetune.FinetuneModule" in train.stdout
    prepare = _run(["-m", "heartgpt.prepare", "label_kind=sequence", "--cfg", "job", "--resolve"],
                   work, env)
    assert prepare.returncode == 0, prepare.stderr
    assert f"out_dir: {work}/data/shards/ecg/sequence" in prepare.stdout.replace("'", "")


@pytest.mark.parametrize(("override", "new"), [
    ("task_name=x", "run_name"),
    ("task.pretrained=w.zip", "module.pretrained"),
    ("+task.lr=1", "module.lr"),
    ("task.task_type=token", "module.head"),
    ("data.task_type=token", "data.label_kind"),
])
def test_old_training_keys_name_the_new_one(override, new):
    with pytest.raises(RenamedKeyError, match=f"'{new}'"):
        check_overrides([override], TRAIN_RENAMES)


def test_current_keys_and_group_choices_pass():
    check_overrides(["task=af", "module.lr=1", "run_name=x", "data.label_kind=token",
                     "hydra.job.chdir=false", "--cfg", "job"], TRAIN_RENAMES)
    check_overrides(["label_kind=sequence"], PREPARE_RENAMES)


def test_prepare_task_type_names_label_kind_and_its_value():
    with pytest.raises(RenamedKeyError, match="use label_kind=unlabelled"):
        check_overrides(["task_type=pretrain"], PREPARE_RENAMES)


def test_old_key_in_a_config_file_is_an_error():
    from omegaconf import OmegaConf

    check_config(OmegaConf.create({"run_name": "x", "module": {"head": "token"}}), TRAIN_RENAMES)
    with pytest.raises(RenamedKeyError, match="'task_name' was renamed 'run_name'"):
        check_config(OmegaConf.create({"task_name": "x"}), TRAIN_RENAMES)
    with pytest.raises(RenamedKeyError, match="'task.pretrained' was renamed 'module.pretrained'"):
        check_config(OmegaConf.create({"task": {"pretrained": "w.zip"}}), TRAIN_RENAMES)


def test_old_key_on_the_command_line_stops_with_one_line(tmp_path):
    done = _run(["-m", "heartgpt.train", "task=af", "task.pretrained=w.zip"], tmp_path)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        "error: config key 'task.pretrained' was renamed 'module.pretrained' in heartgpt 0.2: "
        "use module.pretrained instead"]
    assert not (tmp_path / "outputs").exists()


def test_atomic_path_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "sub" / "result.json"
    write_text_atomic(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["result.json"]  # no temp left
    write_text_atomic(target, "new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["result.json"]


def test_shards_of_heartgpt_0_1_still_read(tmp_path):
    """0.1 stored label_kind as the attribute `task` ('pretrain' for unlabelled shards)."""
    meta = ShardMeta(modality="ecg", sample_rate=100.0, vocab_size=101, segment_length=8,
                     label_kind="unlabelled", source="unit test")
    with ShardWriter(tmp_path, meta, rows_per_shard=4) as w:
        w.add(np.zeros((4, 8), dtype=np.int64), ["s"] * 4, ["r"] * 4, np.zeros(4))
    manifest = read_manifest(tmp_path)
    for path in manifest.paths:
        with h5py.File(path, "r+") as f:
            del f.attrs["label_kind"]
            f.attrs["task"] = "pretrain"
    stored = json.loads((tmp_path / "manifest.json").read_text())
    stored["meta"]["task"] = "pretrain"
    del stored["meta"]["label_kind"]
    for shard, path in zip(stored["shards"], manifest.paths, strict=True):
        shard["bytes"], shard["sha256"] = path.stat().st_size, sha256_file(path)
    (tmp_path / "manifest.json").write_text(json.dumps(stored))
    again = validate_shard_dir(tmp_path, label_kind="unlabelled", verify_checksums=True)
    assert again.meta.label_kind == "unlabelled" and again.total_rows == 4
