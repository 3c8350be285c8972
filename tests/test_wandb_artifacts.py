"""W&B as its users expect it, read back from the offline run files: the best and last checkpoints
as model artifacts with their sha256 and metrics (``logger.wandb.log_model=true``), the test/eval
predictions and confusion matrices as tables and plots, a folder (an exported hub folder) as an
artifact."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from heartgpt.files import sha256_file
from heartgpt.training.run import train
from training_helpers import FAST, build_tiny_demo, compose_train, read_wandb_records, wandb_history

BOTH_CLASSES = ["data.val_fraction=0.3", "trainer.limit_val_batches=1.0"]  # val/auroc defined


def artifacts(run_file: Path) -> list[dict]:
    """``{name, type, aliases, metadata, files: {path: size}}`` of every artifact an offline run
    file logs (the run is finished: wandb_history waited for its exit record)."""
    from wandb.proto import wandb_internal_pb2 as pb

    wandb_history(run_file)
    out = []
    for raw in read_wandb_records(run_file):
        rec = pb.Record()
        rec.ParseFromString(raw)
        if rec.WhichOneof("record_type") == "artifact":
            a = rec.artifact
            out.append({"name": a.name, "type": a.type, "aliases": list(a.aliases),
                        "metadata": json.loads(a.metadata or "{}"),
                        "files": {e.path: e.size for e in a.manifest.contents}})
    return out


def logged_table(run_dir: Path, history: list[dict], key: str) -> dict:
    """The table logged under ``key`` (the run file keeps its reference flattened:
    ``<key>/_type``, ``<key>/path``, ...), read from the offline run's files."""
    (entry,) = [{k.removeprefix(f"{key}/"): v for k, v in h.items() if k.startswith(f"{key}/")}
                for h in history if f"{key}/path" in h]
    assert entry["_type"] == "table-file", entry
    return json.loads((run_dir / "files" / entry["path"]).read_text())


@pytest.mark.slow
def test_a_fine_tune_logs_its_best_checkpoint_and_test_predictions(tmp_path):
    data_dir = build_tiny_demo(tmp_path / "data")
    out = tmp_path / "run"
    cfg = compose_train([*FAST, "experiment=demo_af", "module.pretrained=null", "logger=wandb",
                         "logger.wandb.log_model=true", "test=true", *BOTH_CLASSES,
                         "callbacks.attention_maps=null"],
                        data_dir=data_dir, output_dir=out, log_dir=tmp_path / "logs")
    train(cfg)
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    run_file = next(run_dir.glob("run-*.wandb"))
    run_id = run_file.stem.removeprefix("run-")
    logged = [a for a in artifacts(run_file) if a["type"] == "model"]  # tables are run_table
    by_alias = {alias: a for a in logged for alias in a["aliases"]}
    assert set(by_alias) == {"best", "last", "latest"}  # W&B's own: the newest version
    tested = json.loads((out / "test_metrics.json").read_text())
    for a in (by_alias["best"], by_alias["last"]):
        assert (a["name"], a["type"]) == (f"model-{run_id}", "model")
        (name,) = a["files"]
        ckpt = out / "checkpoints" / name
        assert a["metadata"]["sha256"] == sha256_file(ckpt)
        assert a["files"][name] == ckpt.stat().st_size == a["metadata"]["bytes"]
    best = by_alias["best"]["metadata"]
    assert Path(tested["checkpoint"]).name == by_alias["best"]["metadata"]["filename"]
    assert best["monitor"] == "val/auroc" and best["mode"] == "max"
    assert 0.0 <= best["score"] <= 1.0
    assert best["test"]["test/auroc"] == pytest.approx(tested["test/auroc"])
    assert "final/val/auroc" in by_alias["last"]["metadata"]

    history = wandb_history(run_file)
    table = logged_table(run_dir, history, "test/predictions")
    with open(out / "test_predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert table["columns"] == list(rows[0])
    assert len(table["data"]) == len(rows) > 0
    assert [str(v) for v in table["data"][0]] == [str(type(c)(v)) for c, v in
                                                   zip(table["data"][0], rows[0].values(),
                                                       strict=True)]


def test_log_model_is_off_by_default(tmp_path):
    cfg = compose_train(["logger=wandb"], output_dir=tmp_path / "run", log_dir=tmp_path / "logs")
    assert cfg.logger.wandb.log_model is False and cfg.logger.wandb.log_tables is True


def test_a_confusion_matrix_and_a_folder_are_logged(tmp_path):
    import wandb

    from heartgpt.training.loggers import WandbLogger
    from heartgpt.training.wandb_artifacts import log_folder, log_result_tables

    run_dir = tmp_path / "eval_run"
    run_dir.mkdir()
    (run_dir / "eval_confusion_matrix.csv").write_text(
        "true \\ predicted,sinus,af,other\nsinus,5,1,0\naf,2,7,0\nother,0,0,3\n")
    (run_dir / "eval_predictions.csv").write_text("row,label,pred\n0,0,0\n1,1,0\n")
    hub = tmp_path / "hub"
    (hub / "sub").mkdir(parents=True)
    (hub / "config.json").write_text("{}")
    (hub / "sub" / "model.safetensors").write_bytes(b"\0" * 64)
    logger = WandbLogger(project="heartgpt", save_dir=str(tmp_path), offline=True,
                         settings={"quiet": True}, log_model=False, log_tables=True)
    trainer = SimpleNamespace(is_global_zero=True, loggers=[logger])
    try:
        keys = log_result_tables(trainer, run_dir, "eval")
        log_folder(logger.experiment, hub, "hub-af", metadata={"checkpoint": "x.ckpt"})
    finally:
        wandb.finish()
    assert keys == ["eval/predictions", "eval/confusion_matrix_counts", "eval/confusion_matrix"]
    (wandb_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    run_file = next(wandb_dir.glob("run-*.wandb"))
    (folder,) = [a for a in artifacts(run_file) if a["type"] == "model"]
    assert (folder["name"], folder["type"]) == ("hub-af", "model")
    assert set(folder["files"]) == {"config.json", "sub/model.safetensors"}
    assert folder["metadata"]["files"]["sub/model.safetensors"] == sha256_file(
        hub / "sub" / "model.safetensors")
    history = wandb_history(run_file)
    counts = logged_table(wandb_dir, history, "eval/confusion_matrix_counts")
    assert counts["columns"] == ["Actual", "Predicted", "nPredictions"]
    assert ["af", "sinus", 2] in counts["data"] and len(counts["data"]) == 9
    assert sum(r[2] for r in counts["data"]) == 18
    plot = logged_table(wandb_dir, history, "eval/confusion_matrix_table")
    assert plot["data"] == counts["data"]  # W&B's confusion-matrix plot of the same counts
    assert logged_table(wandb_dir, history, "eval/predictions")["data"] == [[0, 0, 0], [1, 1, 0]]


def test_a_hub_folder_joins_the_w_and_b_run_of_its_run_dir(tmp_path):
    from heartgpt.training.resume import WANDB_ID_FILE
    from heartgpt.training.wandb_artifacts import log_folder_to_run

    run_dir, hub = tmp_path / "run", tmp_path / "hub" / "af"
    hub.mkdir(parents=True)
    (hub / "README.md").write_text("model card")
    with pytest.raises(FileNotFoundError, match=WANDB_ID_FILE):
        log_folder_to_run(run_dir, hub)
    run_dir.mkdir()
    (run_dir / WANDB_ID_FILE).write_text("abc123\n")
    assert log_folder_to_run(run_dir, hub) == "abc123"
    (run_file,) = (run_dir / "wandb").glob("offline-run-*-abc123/run-abc123.wandb")
    (logged,) = artifacts(run_file)
    assert (logged["name"], logged["type"], set(logged["files"])) == ("hub-af", "model",
                                                                      {"README.md"})
    assert logged["metadata"]["run_dir"] == str(run_dir.resolve())
