"""What a short ``python -m heartgpt.train`` prints (stdout not a terminal, W&B offline): none of
the known library noise, and few lines."""

from __future__ import annotations

from training_helpers import TINY_MODEL, build_tiny_demo, run_module

NOISE = (
    "litlogger",                                          # Lightning's advertisement
    "Trainer already configured with model summary",      # the summary callback is configured
    "anonymous setting has no effect",                    # WandbLogger passing anonymous=None
    "Run history", "Run summary",                         # wandb's 30-line footer
    "LeafSpec",                                           # a deprecation inside Lightning
    "FLOPs",                                              # all 0 without example_input_array
    "/-2",                                                # "Epoch 0/-2" in step-based runs
    "TPU available",
    "weights_only",
    "Traceback",
)
# What is left of a 4-step run with 2 validations and a test (measured: 36 lines): ~10 log lines
# (seed, GPU, fit stopped, checkpoint restored/loaded, W&B sync hint), 3 lines of W&B's offline
# header, the model summary (11 lines), the test metrics table (7 lines), progress lines
# (validations, test). Before this budget, the same run printed ~75.
LINE_BUDGET = 45


def test_a_short_run_prints_no_known_noise(tmp_path):
    data = build_tiny_demo(tmp_path / "data")
    result = run_module([*TINY_MODEL, f"paths.data_dir={data}", f"hydra.run.dir={tmp_path / 'run'}",
                         "trainer.max_steps=4", "trainer.val_check_interval=2",
                         "trainer.limit_val_batches=2", "trainer.limit_test_batches=2",
                         "data.num_workers=0", "callbacks.attention_maps=null"], cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    for noise in NOISE:
        assert noise not in output, f"{noise!r} in:\n{output}"
    lines = output.splitlines()
    assert len(lines) <= LINE_BUDGET, output
    # what a user needs is still there
    for needed in ("GPU available", "Params", "validation at step 4: val/loss",
                   "`Trainer.fit` stopped", "Test metric", "wandb sync"):
        assert needed in output, f"{needed!r} missing from:\n{output}"
