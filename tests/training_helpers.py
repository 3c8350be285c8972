"""Helpers of the training tests: tiny demo shards, composing ``conf/train.yaml``, reading logs."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from heartgpt.conf import CONF_DIR
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from heartgpt.data.demo import build_demo

# A tiny model and a few steps: every training test starts from these.
TINY_MODEL = ["model.n_layer=2", "model.n_embd=32", "model.n_head=4", "model.block_size=64"]
FAST = ["debug=fast", *TINY_MODEL]


# A tiny AF fine-tune that tests and calibrates itself (the calibration callback on a small
# reference), on shards of build_ecg_demo_500
TINY_CALIBRATED_AF = ["debug=fast", "logger=csv", "callbacks.progress.mode=log",
                      "callbacks.rich_model_summary=null", "data.global_batch_size=4", *TINY_MODEL,
                      "task=af", "test=true", "data.test_fraction=0.5",
                      "trainer.limit_test_batches=1.0", "trainer.max_steps=4",
                      "trainer.val_check_interval=2", "trainer.limit_val_batches=1.0",
                      "callbacks.calibration.max_reference_windows=16"]


def build_ecg_demo_500(root: Path, subjects: int = 6, seconds: float = 40,
                       rows_per_shard: int = 64) -> Path:
    """SYNTHETIC ECG demo shards under ``<root>/demo/ecg`` with 500-sample fine-tuning windows
    (the released context) every 250 samples; returns ``root`` (the data_dir)."""
    build_demo(root / "demo" / "ecg", "ecg", subjects=subjects, seconds=seconds, seed=0,
               pretrain_samples=501, finetune_samples=500, finetune_stride=250,
               beat_tolerance=0, rows_per_shard=rows_per_shard)
    return root


def build_tiny_demo(data_dir: Path) -> Path:
    """SYNTHETIC demo shards for both modalities under ``<data_dir>/demo`` (8 subjects, 60 s)."""
    for modality in ("ecg", "ppg"):
        build_demo(data_dir / "demo" / modality, modality, subjects=8, seconds=60, seed=0,
                   pretrain_samples=200, finetune_samples=100, finetune_stride=50,
                   beat_tolerance=0, rows_per_shard=128)
    return data_dir


def compose_train(overrides: list[str], data_dir: Path | None = None,
                  output_dir: Path | None = None, log_dir: Path | None = None,
                  config_name: str = "train") -> DictConfig:
    """``conf/<config_name>.yaml`` with ``overrides``, its ``paths`` pointed at the given folders."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        for key, value in (("data_dir", data_dir), ("output_dir", output_dir), ("log_dir", log_dir)):
            if value is not None:
                cfg.paths[key] = str(value)
        del cfg["hydra"]
    return cfg


def compose_eval(overrides: list[str], data_dir: Path | None = None,
                 output_dir: Path | None = None, log_dir: Path | None = None) -> DictConfig:
    """``conf/eval.yaml`` with ``overrides``, its ``paths`` pointed at the given folders."""
    return compose_train(overrides, data_dir, output_dir, log_dir, config_name="eval")


def read_metrics_csv(output_dir: Path) -> list[dict[str, str]]:
    """Rows of the CSV logger's ``metrics.csv`` in a run directory."""
    (path,) = Path(output_dir).glob("csv/version_*/metrics.csv")
    with open(path) as f:
        return list(csv.DictReader(f))


def column(rows: list[dict[str, str]], name: str) -> list[tuple[int, float]]:
    """``(step, value)`` of every row that has ``name``."""
    return [(int(r["step"]), float(r[name])) for r in rows if r.get(name)]


def read_wandb_records(path: Path) -> list[bytes]:
    """The protobuf records of an offline ``run-<id>.wandb`` file (LevelDB log framing)."""
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path}: not a W&B run file"
    pos, block, out, buf = 7, 32768, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer padding
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        if pos + 7 + length > len(data):  # a record still being written
            break
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:  # full
            out.append(chunk)
        elif kind == 2:  # first
            buf = chunk
        elif kind == 3:  # middle
            buf += chunk
        elif kind == 4:  # last
            out.append(buf + chunk)
        else:
            break
    return out


def wandb_history(run_file: Path, timeout: float = 60.0) -> list[dict]:
    """The history rows (``wandb.log`` calls) of an offline W&B run file.

    The W&B service may still be flushing the file when ``wandb.finish()`` returns: wait for its
    ``exit`` record.
    """
    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2 as pb

    deadline = time.monotonic() + timeout
    while True:
        records, torn = [], False
        for raw in read_wandb_records(run_file) if Path(run_file).is_file() else []:
            rec = pb.Record()
            try:
                rec.ParseFromString(raw)
            except DecodeError:  # the service is mid-write: read the file again
                torn = True
                break
            records.append(rec)
        done = not torn and any(r.WhichOneof("record_type") == "exit" for r in records)
        if done or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    return [{(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
            for r in records if r.WhichOneof("record_type") == "history"]


def build_tiny_targets(data_dir: Path) -> Path:
    """The SYNTHETIC targets demo (ECG: hr, rhythm, hr_tag shards and their recordings, 12
    subjects x 2 recordings) under ``<data_dir>/demo/ecg``, made as ``prepare`` makes it."""
    done = run_module(["source=demo", "demo.sets=[targets]", "demo.modalities=[ecg]",
                       "demo.target_subjects=12", "demo.target_records=2",
                       f"paths.data_dir={data_dir}"], cwd=data_dir, module="heartgpt.prepare")
    assert done.returncode == 0, done.stderr
    return data_dir / "demo" / "ecg"


def run_module(args: list[str], cwd: Path, timeout: int = 600,
               module: str = "heartgpt.train") -> subprocess.CompletedProcess:
    """``python -m <module> <args>`` in ``cwd`` (W&B offline, no GPU)."""
    env = {**os.environ, "WANDB_MODE": "offline", "CUDA_VISIBLE_DEVICES": "", "MPLBACKEND": "Agg",
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
