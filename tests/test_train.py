"""``heartgpt.train`` end to end: fast CPU runs, overfitting, resume, bf16, W&B offline, and (slow,
in subprocesses) 2-process DDP and a multirun."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from heartgpt.data.shards import read_manifest
from heartgpt.model.checkpoints import load_model
from heartgpt.training.pretrain import PretrainModule
from heartgpt.training.resume import WANDB_ID_FILE
from heartgpt.training.run import ensure_demo_shards, train
from training_helpers import (
    FAST,
    TINY_MODEL,
    build_tiny_demo,
    column,
    compose_train,
    read_metrics_csv,
    run_module,
    wandb_history,
)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return build_tiny_demo(tmp_path_factory.mktemp("data"))


def run_train(overrides: list[str], data_dir: Path, out: Path, log_dir: Path | None = None) -> float | None:
    cfg = compose_train([*FAST, *overrides], data_dir=data_dir, output_dir=out,
                        log_dir=log_dir or out.parent / "logs")
    return train(cfg)


@pytest.mark.parametrize("modality", ["ecg", "ppg"])
def test_fast_run(modality, data_dir, tmp_path, caplog):
    out = tmp_path / "run"
    val_loss = run_train([f"modality={modality}"], data_dir, out)
    synthetic = [r.getMessage() for r in caplog.records if "SYNTHETIC demo data" in r.getMessage()]
    assert len(synthetic) == 2 and synthetic[0].startswith("training on")  # at start and end
    assert "synthetic" in (out / "config.yaml").read_text()  # tags: [dev, synthetic]
    rows = read_metrics_csv(out)
    assert val_loss == pytest.approx(column(rows, "val/loss")[-1][1])
    assert 3.5 < val_loss < math.log(110)  # a few steps from uniform over ~101 tokens
    for name in ("train/loss", "train/global_loss", "train/ppl", "train/acc", "val/ppl",
                 "val/acc", "test/loss"):
        assert column(rows, name), name
    assert len(column(rows, "train/loss")) == 6  # per step
    ckpts = sorted(p.name for p in (out / "checkpoints").glob("*.ckpt"))
    assert len(ckpts) == 2 and "last.ckpt" in ckpts  # best + last
    loaded = load_model(out / "checkpoints" / "last.ckpt")
    assert loaded.modality == modality and loaded.synthetic
    assert loaded.model.config.vocab_size == {"ecg": 101, "ppg": 102}[modality]


def test_demo_shards_are_built_if_absent(tmp_path):
    cfg = compose_train(["modality=ppg"], data_dir=tmp_path / "data", output_dir=tmp_path / "run",
                        log_dir=tmp_path / "logs")
    ensure_demo_shards(cfg)
    assert (tmp_path / "data" / "demo" / "ppg" / "pretrain" / "manifest.json").is_file()
    assert (tmp_path / "data" / "demo" / "ppg" / "af" / "manifest.json").is_file()
    assert not (tmp_path / "data" / "demo" / "ppg" / "hr").exists()  # only what the run needs


@pytest.mark.slow
def test_a_targets_demo_set_is_built_if_absent(tmp_path):
    """``python -m heartgpt.train experiment=demo_hr`` in a fresh folder: the targets demo's
    recordings and shard sets are prepared as ``prepare source=demo`` prepares them."""
    cfg = compose_train(["experiment=demo_hr", "module.pretrained=null"],
                        data_dir=tmp_path / "data", output_dir=tmp_path / "run",
                        log_dir=tmp_path / "logs")
    ensure_demo_shards(cfg)
    ecg = tmp_path / "data" / "demo" / "ecg"
    for shard_set in ("hr", "rhythm", "hr_tag"):
        assert read_manifest(ecg / shard_set).meta.synthetic
    assert (ecg / "recordings" / "labels.csv").is_file()
    assert not (ecg / "pretrain").exists()


def test_overfit_one_batch(data_dir, tmp_path):
    out = tmp_path / "run"
    cfg = compose_train(["debug=overfit", *TINY_MODEL, "trainer.max_steps=150"], data_dir=data_dir,
                        output_dir=out, log_dir=tmp_path / "logs")
    val_loss = train(cfg)
    losses = [v for _, v in column(read_metrics_csv(out), "train/loss")]
    assert losses[0] > 4.0
    assert losses[-1] < 0.5 * losses[0] and val_loss < 0.5 * losses[0]


def test_resume_follows_the_uninterrupted_run(data_dir, tmp_path):
    """Stop at step 4, resume with ckpt_path=last: steps 5-8 repeat the uninterrupted run."""
    common = ["trainer.max_steps=8", "trainer.val_check_interval=4", "test=false", "data.num_workers=1",
              "data.persistent_workers=false"]
    logs = tmp_path / "logs"
    run_train(common, data_dir, tmp_path / "full", logs)
    stopped = logs / "pretrain_ecg" / "runs" / "stopped"
    run_train([*common, "trainer.max_steps=4", "module.lr_decay_steps=8"], data_dir, stopped, logs)
    run_train([*common, "ckpt_path=last"], data_dir, tmp_path / "resumed", logs)

    full = dict(column(read_metrics_csv(tmp_path / "full"), "train/loss"))
    first = dict(column(read_metrics_csv(stopped), "train/loss"))
    resumed = dict(column(read_metrics_csv(tmp_path / "resumed"), "train/loss"))
    assert sorted(first) == [0, 1, 2, 3] and sorted(resumed) == [4, 5, 6, 7]
    for step in range(8):
        assert (first | resumed)[step] == pytest.approx(full[step], rel=1e-5, abs=1e-6), step
    a = torch.load(tmp_path / "full" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 8
    for k, v in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][k], v, rtol=1e-5, atol=1e-6)


def test_bf16_mixed_on_cpu(data_dir, tmp_path):
    val_loss = run_train(["trainer.precision=bf16-mixed", "test=false"], data_dir, tmp_path / "run")
    assert val_loss is not None and math.isfinite(val_loss) and val_loss < math.log(110)


def test_wandb_offline_run_and_resume(data_dir, tmp_path):
    out = tmp_path / "run"
    over = ["logger=wandb", "callbacks.attention_maps.every_n_validations=1", "test=false",
            "callbacks.attention_maps.figures=[heads,aggregate]"]
    val_loss = run_train(over, data_dir, out)
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    run_id = (out / WANDB_ID_FILE).read_text().strip()
    assert run_dir.name.endswith(run_id)
    history = wandb_history(run_dir / f"run-{run_id}.wandb")
    vals = [h["val/loss"] for h in history if "val/loss" in h]
    assert len(vals) == 2, history
    assert vals[-1] == pytest.approx(val_loss)
    assert any("train/loss" in h for h in history) and any("val/acc" in h for h in history)
    images = run_dir / "files" / "media" / "images" / "val"
    for name in ("attention_layer0", "attention_layer1", "attention_aggregate"):  # layers [0, -1]
        assert len(list(images.glob(f"{name}_*.png"))) == 4, name  # 2 validations x 2 windows

    resumed = tmp_path / "resumed"  # same W&B run id, new run directory
    run_train([*over, f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}", "trainer.max_steps=8"],
              data_dir, resumed)
    assert (resumed / WANDB_ID_FILE).read_text().strip() == run_id
    assert list((resumed / "wandb").glob(f"offline-run-*-{run_id}"))


def test_init_from_in_config(data_dir, tmp_path):
    source = tmp_path / "source"
    run_train(["test=false"], data_dir, source)
    ckpt = source / "checkpoints" / "last.ckpt"
    cfg = compose_train([*FAST, f"module.init_from={ckpt}", "train=false"], data_dir=data_dir,
                        output_dir=tmp_path / "run", log_dir=tmp_path / "logs")
    train(cfg)  # testing only: init_from is applied when fitting, so this stays random
    module = PretrainModule(**{k: v for k, v in cfg.module.items() if k != "_target_"})
    module.setup("fit")
    assert torch.equal(module.model.head.weight, load_model(ckpt).model.head.weight)


@pytest.mark.slow
def test_ddp_two_cpu_processes(data_dir, tmp_path):
    out = tmp_path / "run"
    result = run_module([*FAST, "trainer=ddp_cpu", "trainer.devices=2", "test=false",
                         f"paths.data_dir={data_dir}", f"hydra.run.dir={out}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert len(ckpts) == 2 and "last.ckpt" in ckpts, ckpts  # one best + one last, written once
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 6


@pytest.mark.slow
def test_global_batch_is_the_same_recipe_on_one_process_or_two(data_dir, tmp_path):
    """Global batch 16 as (a) 1 process, micro batch 8, 2 accumulation steps and (b) 2 ddp_cpu
    processes, micro batch 8: the same 16 windows make each optimiser step (the sampler deals
    rank r the keys r, r + 2, ... of one global order), dropout is 0, so the losses of the 4
    steps and the final weights agree. Not bit for bit: accumulation sums two micro-batch
    gradients in one order, DDP's all-reduce averages them in another (float32 rounding, ~1e-7
    relative per step, which AdamW's normalised update carries over 4 steps)."""
    recipe = [*FAST, "model.dropout=0.0", "trainer.max_steps=4", "trainer.val_check_interval=4",
              "data.global_batch_size=16", "data.micro_batch_size=8", "test=false",
              f"paths.data_dir={data_dir}"]
    runs = {}
    for name, extra in (("one", []), ("two", ["trainer=ddp_cpu", "trainer.devices=2"])):
        out = tmp_path / name
        done = run_module([*recipe, *extra, f"hydra.run.dir={out}"], cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-4000:]
        losses = [v for _, v in column(read_metrics_csv(out), "train/global_loss")]
        ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
        runs[name] = losses, ckpt
        assert "global batch 16 = micro batch 8 x" in (out / "train.log").read_text()
    (losses1, ckpt1), (losses2, ckpt2) = runs["one"], runs["two"]
    assert ckpt1["hyper_parameters"]["batch"] == {"global_batch_size": 16, "micro_batch_size": 8,
                                                  "accumulate_grad_batches": 2, "world_size": 1}
    assert ckpt2["hyper_parameters"]["batch"] == {"global_batch_size": 16, "micro_batch_size": 8,
                                                  "accumulate_grad_batches": 1, "world_size": 2}
    assert ckpt1["global_step"] == ckpt2["global_step"] == 4
    assert len(losses1) == len(losses2) == 4
    assert losses1 == pytest.approx(losses2, rel=1e-5, abs=1e-6)
    for key, w1 in ckpt1["state_dict"].items():
        torch.testing.assert_close(ckpt2["state_dict"][key], w1, rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.slow
def test_torchrun_two_processes(data_dir, tmp_path):
    """``torchrun --nproc-per-node=2 -m heartgpt.train trainer=ddp_cpu``: Lightning takes ranks
    from torchrun's environment; ``hydra.run.dir`` gives both processes the same run directory
    (Hydra names it by the second: two processes could disagree)."""
    import os
    import subprocess
    import sys

    out = tmp_path / "run"
    args = [*FAST, "trainer=ddp_cpu", "trainer.devices=2", "trainer.max_steps=2",
            "trainer.val_check_interval=2", "test=false", "logger=none",
            f"paths.data_dir={data_dir}", f"hydra.run.dir={out}"]
    env = {**os.environ, "WANDB_MODE": "offline", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2",
                           "--standalone", "-m", "heartgpt.train", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert len(ckpts) == 2 and "last.ckpt" in ckpts, ckpts  # one best + one last
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2 and ckpt["hyper_parameters"]["batch"]["world_size"] == 2


@pytest.mark.slow
def test_submitit_local_launcher_runs_two_tasks_as_one_ddp_job(data_dir, tmp_path):
    """``-m hydra/launcher=local`` (submitit's local executor, 2 tasks): the same launcher path as
    SLURM, the ranks read from submitit's variables, one job with 2 processes."""
    # as docs/training.md types it: Hydra's own sweep folder, no hydra.sweep.dir
    done = run_module(["-m", "hydra/launcher=local", *FAST, "trainer=ddp_cpu", "trainer.devices=2",
                       "trainer.max_steps=2", "trainer.val_check_interval=2", "test=false",
                       "logger=none", f"paths.data_dir={data_dir}"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    (sweep,) = (tmp_path / "outputs" / "pretrain_ecg" / "multiruns").iterdir()
    ckpts = sorted(p.name for p in (sweep / "0" / "checkpoints").iterdir())
    assert len(ckpts) == 2 and "last.ckpt" in ckpts, ckpts  # one best + one last
    ckpt = torch.load(sweep / "0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2 and ckpt["hyper_parameters"]["batch"]["world_size"] == 2


@pytest.mark.slow
def test_multirun_writes_separate_run_dirs(data_dir, tmp_path):
    """With no sweep directory given: ``./outputs/<task>/multiruns/<time>/<job>``."""
    result = run_module(["-m", "model=paper,medium", *FAST, "trainer.max_steps=2",
                         "trainer.val_check_interval=2", "test=false", "logger=none",
                         f"paths.data_dir={data_dir}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    (sweep,) = (tmp_path / "outputs" / "pretrain_ecg" / "multiruns").iterdir()
    scales = {}
    for job, model in (("0", "paper"), ("1", "medium")):
        assert f"model={model}" in (sweep / job / ".hydra" / "overrides.yaml").read_text()
        assert "`max_steps=2` reached" in (sweep / job / "train.log").read_text()  # Lightning's log
        ckpt = torch.load(sweep / job / "checkpoints" / "last.ckpt", weights_only=True)
        scales[model] = ckpt["hyper_parameters"]["model_config"]["attn_scale"]
    assert scales == {"paper": 0.125, "medium": None}


def test_submitit_local_environment_reads_the_ranks(monkeypatch):
    from heartgpt.training.environments import SubmititLocalEnvironment, detected_environments

    monkeypatch.delenv("MASTER_PORT", raising=False)
    for name in ("SUBMITIT_LOCAL_NTASKS", "SUBMITIT_LOCAL_GLOBALID"):
        monkeypatch.delenv(name, raising=False)
    assert detected_environments() == []
    monkeypatch.setenv("SUBMITIT_LOCAL_NTASKS", "2")
    monkeypatch.setenv("SUBMITIT_LOCAL_GLOBALID", "1")
    monkeypatch.setenv("SUBMITIT_LOCAL_LOCALID", "1")
    monkeypatch.setenv("SUBMITIT_LOCAL_JOB_ID", "4242")
    [env] = detected_environments()
    assert isinstance(env, SubmititLocalEnvironment) and env.creates_processes_externally
    assert (env.world_size(), env.global_rank(), env.local_rank(), env.node_rank()) == (2, 1, 1, 0)
    port = env.main_port
    assert 20_000 <= port < 40_000 and SubmititLocalEnvironment().main_port == port  # all tasks
