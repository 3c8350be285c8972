"""The pre-training DataModule: windows/s it delivers versus windows/s a training step consumes.

Synthetic demo ECG shards (:func:`heartgpt.data.demo.build_demo`, 40 subjects x 180 s: 720
segments of 1000 tokens) are written to a temporary folder; :class:`PretrainDataModule` with
``block_size`` 500 and batch 64 is iterated with 0 and 2 workers. The first epoch warms up
(worker start, file opening); then, interleaved with our model's training step (batch 64, fp32,
dropout 0.2, AdamW: the windows/s the loader must keep up with), one epoch per round is timed
(:func:`bench.common.interleave`); each round gives a ratio, reported as median and range.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from bench.bench_train import PAPER, TINY, train_unit
from bench.common import interleave, metric, parser, round_ratios, section, threads_for
from heartgpt.data import PretrainDataModule
from heartgpt.data.demo import build_demo


def loader_unit(shard_dir: str, block_size: int, batch: int, workers: int,
                windows_per_segment: int):
    """The train loader after one warm-up epoch (worker start, file opening); a unit is one
    epoch, returning the windows it delivered."""
    dm = PretrainDataModule(
        shard_dir, "ecg", block_size=block_size, global_batch_size=batch, seed=0,
        val_fraction=0.1, test_fraction=0.1, windows_per_segment=windows_per_segment,
        num_workers=workers, persistent_workers=workers > 0, verify_checksums=False)
    dm.setup()
    loader = dm.train_dataloader()
    t0 = time.perf_counter()
    for _ in loader:  # epoch 0
        pass
    warm_s = time.perf_counter() - t0
    epoch = [0]

    def unit() -> int:
        epoch[0] += 1
        loader.sampler.set_epoch(epoch[0])
        return sum(x.size(0) for x, _ in loader)

    return unit, {"warmup_epoch_s": warm_s}


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
        sides = {f"loader_w{w}": (loader_unit, dict(
            shard_dir=str(Path(tmp) / "pretrain"), block_size=config["block_size"], batch=batch,
            workers=w, windows_per_segment=1 if args.tiny else 4)) for w in (0, 2)}
        sides["train"] = (train_unit, dict(impl="ours", batch=batch, steps=1, warmup=1,
                                           config=config))
        print(f"data      loader (0, 2 workers: an epoch) and training step (batch {batch}) "
              f"interleaved, {args.rounds} rounds", flush=True)
        result = interleave(sides, args.rounds, threads=threads, inline=args.inline,
                            reject_above=args.reject_above)

    def rate(rnd: dict, side: str) -> float:  # windows/s
        return (rnd["out"][side] or batch) / rnd["seconds"][side]

    rows, metrics = [], []
    for side in sides:
        rates = [rate(r, side) for r in result["rounds"]]
        rows.append({"workers": side.removeprefix("loader_w") if side != "train"
                     else "training step", "windows": result["rounds"][0]["out"][side] or batch,
                     "seconds": statistics.median(result["sides"][side]["seconds"]),
                     "windows_per_s": statistics.median(rates),
                     "range": f"{min(rates):.1f}-{max(rates):.1f}", "round_windows_per_s": rates,
                     **result["sides"][side]["info"]})
    consumed = rows[-1]["windows_per_s"]
    for r in rows[:-1]:
        print(f"data      {r['workers']} workers: {r['windows_per_s']:8.0f} windows/s", flush=True)
        side = f"loader_w{r['workers']}"
        metrics.append(metric(
            f"data_workers{r['workers']}",
            f"DataModule, {r['workers']} workers: windows/s vs a training step's need",
            r["windows_per_s"], "windows/s", ref=consumed,
            ref_what=f"training step, batch {batch}", target=10.0,
            spread=round_ratios(result, lambda rnd, s=side: rate(rnd, s) / rate(rnd, "train"))))
    print(f"data      training consumes {consumed:.1f} windows/s", flush=True)
    return section("data", args, rows, metrics, time.perf_counter() - t0, interleaved=[result],
                   config=config, threads=threads)


if __name__ == "__main__":
    main()
