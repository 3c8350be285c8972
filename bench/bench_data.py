"""The pre-training DataModule: windows/s it delivers versus windows/s a training step consumes.

Synthetic demo ECG shards (:func:`heartgpt.data.demo.build_demo`, 40 subjects x 180 s: 720
segments of 1000 tokens) are written to a temporary folder; :class:`PretrainDataModule` with
``block_size`` 500 and batch 64 is iterated with 0 and 2 workers. The first epoch warms up
(worker start, file opening); the following epochs are timed. In the same process, our model's
training step (batch 64, fp32, dropout 0.2, AdamW) is timed: the windows/s the loader must
keep up with.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench.bench_train import PAPER, TINY, measure_train_step
from bench.common import measure, metric, parser, section, threads_for
from heartgpt.data import PretrainDataModule
from heartgpt.data.demo import build_demo


def loader_rate(shard_dir: Path, block_size: int, batch: int, workers: int, epochs: int,
                windows_per_segment: int) -> dict:
    """Windows/s of the train loader over ``epochs`` epochs after one warm-up epoch."""
    dm = PretrainDataModule(
        str(shard_dir), "ecg", block_size=block_size, batch_size=batch, seed=0,
        val_fraction=0.1, test_fraction=0.1, windows_per_segment=windows_per_segment,
        num_workers=workers, persistent_workers=workers > 0, verify_checksums=False)
    dm.setup()
    loader = dm.train_dataloader()
    t0 = time.perf_counter()
    for _ in loader:  # epoch 0: starts the workers, opens the files
        pass
    warm_s = time.perf_counter() - t0
    windows = 0
    t0 = time.perf_counter()
    for epoch in range(1, epochs + 1):
        loader.sampler.set_epoch(epoch)
        for x, _ in loader:
            windows += x.size(0)
    seconds = time.perf_counter() - t0
    return {"workers": workers, "windows": windows, "seconds": seconds, "warmup_epoch_s": warm_s,
            "windows_per_s": windows / seconds}


def measure_data(shard_dir: str, config: dict, batch: int, epochs: int,
                 windows_per_segment: int) -> dict:
    rows = [loader_rate(Path(shard_dir), config["block_size"], batch, w, epochs,
                        windows_per_segment) for w in (0, 2)]
    train = measure_train_step("ours", batch, steps=1, warmup=1, config=config)
    train["windows_per_s"] = batch / train["seconds_per_step"]
    return {"loader": rows, "train": train}


def main(argv: list[str] | None = None) -> dict:
    args = parser(__doc__).parse_args(argv)
    config = TINY if args.tiny else PAPER
    subjects, seconds = (4, 30) if args.tiny else (40, 180)
    batch = 4 if args.tiny else 64
    threads = threads_for(args.tiny)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="heartgpt-bench-") as tmp:
        build_demo(Path(tmp), "ecg", subjects=subjects, seconds=seconds, seed=0,
                   pretrain_samples=1000, finetune_samples=500, finetune_stride=500,
                   beat_tolerance=0, rows_per_shard=2048)
        out = measure(measure_data, threads, args.inline, shard_dir=str(Path(tmp) / "pretrain"),
                      config=config, batch=batch, epochs=1 if args.tiny else 3,
                      windows_per_segment=1 if args.tiny else 4)
    consumed = out["train"]["windows_per_s"]
    rows = out["loader"] + [{"workers": "training step", **out["train"]}]
    for r in out["loader"]:
        print(f"data      {r['workers']} workers: {r['windows_per_s']:8.0f} windows/s", flush=True)
    print(f"data      training consumes {consumed:.1f} windows/s", flush=True)
    metrics = [
        metric(f"data_workers{r['workers']}",
               f"DataModule, {r['workers']} workers: windows/s vs a training step's need",
               r["windows_per_s"], "windows/s", ref=consumed,
               ref_what=f"training step, batch {batch}", target=10.0)
        for r in out["loader"]
    ]
    return section("data", args, rows, metrics, time.perf_counter() - t0, config=config,
                   threads=threads)


if __name__ == "__main__":
    main()
