"""Every tool's CLI end to end on tiny checkpoints; bad inputs give one error line, exit 1."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from heartgpt import detect_beats, generate, interpret, screen_af
from heartgpt.model.checkpoints import WEIGHTS_ENV
from heartgpt.model.safetensors_file import save_safetensors
from tiny import tiny_gpt


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    lm = tiny_gpt()
    tuned = tiny_gpt(out_features=1)
    tuned.load_state_dict({k: v for k, v in lm.state_dict().items() if not k.startswith("head")},
                          strict=False)
    f = {
        "lm": save_safetensors(lm, d / "lm.safetensors", modality="ppg"),
        "af": save_safetensors(tuned, d / "af.safetensors", modality="ppg", task="af"),
        "beats": save_safetensors(tuned, d / "beats.safetensors", modality="ppg", task="beats"),
        "garbage": d / "garbage.safetensors",
    }
    f["garbage"].write_bytes(b"not a checkpoint")
    t = np.arange(300) / 50.0
    x = np.abs((np.arange(300) % 32) - 16.0)  # a triangle: same values rising and falling
    f["good"] = d / "good.csv"
    f["good"].write_text("ppg\n" + "\n".join(f"{v:.6f}" for v in x))  # with a header line
    f["npy"] = d / "good125.npy"
    np.save(f["npy"], np.interp(np.arange(750) / 125.0, t, x))  # the same at 125 Hz
    nan = x.copy()
    nan[::20] = np.nan  # every window holds a NaN
    f["nan"] = d / "nan.csv"
    f["nan"].write_text("\n".join(("" if i % 40 else "nan") if np.isnan(v) else f"{v:.6f}"
                                   for i, v in enumerate(nan)))
    f["flat"] = d / "flat.csv"
    f["flat"].write_text("\n".join(["1.5"] * 300))
    f["huge"] = d / "huge.csv"
    f["huge"].write_text("\n".join(f"{v:.6e}" for v in (x / 8 - 1) * 1.7e308))
    f["text"] = d / "text.csv"
    f["text"].write_text("a\nb\nc\n")
    f["missing"] = d / "missing.csv"
    return {k: str(v) for k, v in f.items()}


def ok(capsys, rc: int) -> str:
    out = capsys.readouterr()
    assert rc == 0, out.err
    return out.out


def one_error(capsys, rc: int, *fragments: str) -> str:
    err = capsys.readouterr().err.strip()
    assert rc == 1
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err
    return err


# ------------------------------------------------------------------------------- success
@pytest.mark.parametrize("mode", ["exact", "cached"])
def test_generate(files, tmp_path, capsys, mode):
    rc = generate.main([files["good"], "-c", files["lm"], "-n", "12", "-s", "3", "--seed", "0",
                        "--mode", mode, "--stride", "8", "-o", str(tmp_path)])
    ok(capsys, rc)
    rows = (tmp_path / "good_generated.csv").read_text().splitlines()
    assert rows[0] == "step,sample_0,sample_1,sample_2" and len(rows) == 13
    assert (tmp_path / "good_generated.png").stat().st_size > 0


def test_screen_af(files, tmp_path, capsys):
    out = ok(capsys, screen_af.main([files["npy"], "-c", files["af"], "--sample-rate", "125",
                                     "--stride", "16", "-o", str(tmp_path)]))
    assert "P(AF)" in out
    summary = json.loads((tmp_path / "good125_af.json").read_text())
    assert summary["n_windows"] == len(summary["windows"]) == 16  # 300 samples at 50 Hz
    assert 0 <= summary["recording_af_prob"] <= 1
    assert (tmp_path / "good125_af.csv").exists() and (tmp_path / "good125_af.png").exists()


def test_detect_beats(files, tmp_path, capsys):
    out = ok(capsys, detect_beats.main([files["good"], "-c", files["beats"], "--shift", "16",
                                        "--save-confidence", "-o", str(tmp_path)]))
    assert "beats" in out
    assert (tmp_path / "good_beats.csv").read_text().startswith("beat,sample,input_sample")
    assert len((tmp_path / "good_beat_confidence.csv").read_text().splitlines()) == 301
    assert (tmp_path / "good_beats.png").exists()


@pytest.mark.parametrize("seconds", [6, 80])  # the two-row figure, and overview + zoom
def test_screen_af_with_infinite_and_nan_runs(files, tmp_path, capsys, seconds):
    """+-inf and NaN runs: those windows are skipped, the figure draws the finite samples."""
    x = np.abs((np.arange(50 * seconds) % 32) - 16.0)
    x[40:45], x[150:152], x[200:230], x[-3:] = np.inf, -np.inf, np.nan, np.inf
    rec = tmp_path / "inf.csv"
    rec.write_text("\n".join(str(v) for v in x))  # "inf", "-inf", "nan"
    out = ok(capsys, screen_af.main([str(rec), "-c", files["af"], "--stride", "16",
                                     "-o", str(tmp_path)]))
    assert "skipped" in out and "P(AF)" in out
    summary = json.loads((tmp_path / "inf_af.json").read_text())
    assert 0 < summary["n_skipped"] < summary["n_windows"]
    assert len((tmp_path / "inf_af.csv").read_text().splitlines()) == summary["n_windows"] + 1
    assert (tmp_path / "inf_af.png").stat().st_size > 0


def test_screen_af_tail(files, tmp_path, capsys):
    """300 samples, windows of 64 every 16: 0..224, and (align) one more ending at the end
    (the bare probabilities: ``--trust none``; the trust columns: tests/test_window_trust.py)."""
    ok(capsys, screen_af.main([files["good"], "-c", files["af"], "--stride", "16",
                               "--trust", "none", "-o", str(tmp_path)]))
    align = json.loads((tmp_path / "good_af.json").read_text())
    rows = (tmp_path / "good_af.csv").read_text().splitlines()
    assert rows[0].endswith(",overlaps_previous") and rows[-1].startswith("15,236,300,")
    assert [r[-1] for r in rows[1:]] == ["0"] * 15 + ["1"]
    assert (align["tail"], align["tail_window"], align["averaged_windows"]) == ("align", 15, "0-15")
    out = ok(capsys, screen_af.main([files["good"], "-c", files["af"], "--stride", "16",
                                     "--tail", "drop", "--trust", "none", "-o", str(tmp_path)]))
    assert "mean of 15 windows)" in out and "last 12 samples in no window" in out
    drop = json.loads((tmp_path / "good_af.json").read_text())
    assert (drop["n_windows"], drop["tail_window"], drop["uncovered_end_samples"]) == (15, None, 12)
    assert drop["averaged_windows"] == "0-14"
    assert drop["recording_af_prob"] == pytest.approx(
        np.mean([w["af_prob"] for w in align["windows"][:15]]))


def test_detect_beats_json_summary(files, tmp_path, capsys):
    x = np.abs((np.arange(600) % 32) - 16.0)
    x[300:305] = np.nan  # windows holding it are skipped
    rec = tmp_path / "gap.csv"
    rec.write_text("\n".join(str(v) for v in x))
    out = ok(capsys, detect_beats.main([str(rec), "-c", files["beats"], "--shift", "16",
                                        "-o", str(tmp_path)]))
    s = json.loads((tmp_path / "gap_beats.json").read_text())
    assert str(tmp_path / "gap_beats.json") in out
    assert s["recording"] == str(rec) and s["checkpoint"] == files["beats"]
    rows = (tmp_path / "gap_beats.csv").read_text().splitlines()[1:]
    assert s["n_beats"] == len(rows) and f"{s['n_beats']} beats" in out
    assert s["quality"] in out
    if s["n_beats"]:
        assert f"median confidence {s['median_confidence']:.4f}" in out
    assert s["duration_s"] == pytest.approx(12.0) and s["windows_skipped"] > 0
    assert f"skipped {s['windows_skipped']} window(s)" in out
    hr = s["heart_rate"]
    assert hr["n_intervals"] + hr["intervals_excluded"] == max(len(rows) - 1, 0)
    if hr["n_intervals"]:
        assert hr["median_bpm"] > 0 and hr["mean_bpm"] > 0


@pytest.mark.parametrize(("tool", "drawer", "png"), [("screen_af", "plot_af", "good_af.png"),
                                                    ("detect_beats", "plot_beats",
                                                     "good_beats.png")])
def test_a_figure_that_cannot_be_drawn_names_its_file(files, tmp_path, capsys, monkeypatch,
                                                      tool, drawer, png):
    from heartgpt.inference import plots

    def broken(*args, **kwargs):
        raise ValueError("Axis limits cannot be NaN or Inf")

    monkeypatch.setattr(plots, drawer, broken)
    one_error(capsys, run(tool, files, "good", out=str(tmp_path)),
              f"{png}: cannot draw the figure: Axis limits cannot be NaN or Inf")
    assert (tmp_path / png.replace(".png", ".csv")).exists()  # the results stay written
    assert (tmp_path / png.replace(".png", ".json")).exists()


def test_interpret(files, tmp_path, capsys):
    o = ["-o", str(tmp_path)]
    ok(capsys, interpret.main(["attention", files["good"], "-c", files["lm"], "--layers", "1",
                               *o]))
    for name in ("attention_layer1", "attention_aggregate", "attention_folded"):
        assert (tmp_path / f"good_{name}.png").exists()
    ok(capsys, interpret.main(["homonyms", files["good"], "-c", files["lm"], *o]))
    assert (tmp_path / "good_homonyms.png").exists()
    ok(capsys, interpret.main(["shift", files["good"], "-c", files["af"], "--base", files["lm"],
                               *o]))
    assert np.load(tmp_path / "good_attention_shift.npy").shape == (64,)
    ok(capsys, interpret.main(["export", files["good"], "-c", files["lm"], "--layers", "0", *o]))
    with np.load(tmp_path / "good_trace.npz") as z:
        assert z["hidden_states"].shape == (3, 64, 32) and z["attentions"].shape == (1, 4, 64, 64)
        assert str(z["modality"]) == "ppg"


# ------------------------------------------------------------------------------- default folder
DEFAULT_OUT = [  # (tool, argv before the options, checkpoint, files written)
    ("generate", [], "lm", ["good_generated.csv", "good_generated.png"]),
    ("screen_af", ["--stride", "16"], "af", ["good_af.csv", "good_af.json", "good_af.png"]),
    ("detect_beats", ["--shift", "16"], "beats",
     ["good_beats.csv", "good_beats.json", "good_beats.png"]),
    ("interpret", ["export"], "lm", ["good_trace.npz"]),
    ("interpret", ["attention", "--layers", "0"], "lm",
     ["good_attention_layer0.png", "good_attention_aggregate.png", "good_attention_folded.png"]),
]
MAINS = {"generate": generate.main, "screen_af": screen_af.main,
         "detect_beats": detect_beats.main, "interpret": interpret.main}


@pytest.mark.parametrize(("tool", "argv", "ckpt", "written"), DEFAULT_OUT,
                         ids=[f"{t}-{a[0] if t == 'interpret' else ''}".strip("-")
                              for t, a, _, _ in DEFAULT_OUT])
def test_results_go_to_outputs_tool_by_default(files, tmp_path, monkeypatch, capsys, tool, argv,
                                               ckpt, written):
    """No --out-dir: everything lands in ./outputs/<tool>/, nothing else in the current folder;
    the checkpoint is given by its bare name, found through $HEARTGPT_WEIGHTS."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(WEIGHTS_ENV, str(Path(files[ckpt]).parent))
    sub, opts = (argv[:1], argv[1:]) if tool == "interpret" else ([], argv)
    extra = ["-n", "4"] if tool == "generate" else []
    out = ok(capsys, MAINS[tool]([*sub, files["good"], "-c", Path(files[ckpt]).name, *opts,
                                  *extra]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outputs"]
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == [tool]
    assert sorted(p.name for p in (tmp_path / "outputs" / tool).iterdir()) == sorted(written)
    assert f"outputs/{tool}/{written[0]}" in out.replace("\\", "/")  # the paths it printed


def test_an_explicit_out_dir_wins(files, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    ok(capsys, detect_beats.main([files["good"], "-c", files["beats"], "--shift", "16",
                                  "-o", "mine"]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]
    assert (tmp_path / "mine" / "good_beats.csv").exists()


def test_a_failed_run_makes_no_output_folder(files, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    one_error(capsys, screen_af.main([files["flat"], "-c", files["af"]]), "flat.csv")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(("tool", "sub"), [("generate", []), ("screen_af", []),
                                           ("detect_beats", []), ("interpret", ["attention"]),
                                           ("interpret", ["shift"])])
def test_help_says_where_files_go_and_where_bare_names_are_found(capsys, tool, sub):
    with pytest.raises(SystemExit):
        MAINS[tool]([*sub, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"(default: outputs/{tool}/ under the current folder)" in text
    assert f"looked up in ${WEIGHTS_ENV} and ./weights" in text


# ------------------------------------------------------------------------------- bad inputs
TOOLS = {
    "generate": (generate.main, [], "lm"),
    "screen_af": (screen_af.main, ["--stride", "16"], "af"),
    "detect_beats": (detect_beats.main, ["--shift", "16"], "beats"),
    "interpret": (interpret.main, [], "lm"),
}


def run(tool: str, files: dict, signal: str, *extra: str, ckpt: str | None = None,
        out: str = ".") -> int:
    main, opts, default = TOOLS[tool]
    sub = ["attention"] if tool == "interpret" else []
    return main([*sub, files[signal], "-c", files[ckpt or default], *opts, *extra, "-o", out])


@pytest.mark.parametrize("tool", list(TOOLS))
@pytest.mark.parametrize(("signal", "fragment"), [
    ("missing", "missing.csv: no such file"),
    ("nan", "nan.csv: "),
    ("flat", "flat.csv: "),
    ("text", "text.csv: line 2: not a number"),
    ("huge", "huge.csv: "),  # values near +-1.7e308: an IndexError traceback before
])
def test_bad_recordings(files, tmp_path, capsys, tool, signal, fragment):
    err = one_error(capsys, run(tool, files, signal, out=str(tmp_path)), fragment)
    if signal == "nan":
        assert "NaN" in err
    if signal == "flat":
        assert "flat" in err
    if signal == "huge":
        assert "too large to scale" in err
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("tool", list(TOOLS))
def test_wrong_modality(files, tmp_path, capsys, tool):
    one_error(capsys, run(tool, files, "good", "--modality", "ecg", out=str(tmp_path)),
              "checkpoint is for PPG but --modality says ECG")


@pytest.mark.parametrize(("tool", "ckpt", "fragment"), [
    ("generate", "af", "needs a pre-trained language model"),
    ("screen_af", "lm", "needs a fine-tuned 1-output model"),
    ("screen_af", "beats", "fine-tuned for task 'beats'"),
    ("detect_beats", "lm", "needs a fine-tuned 1-output model"),
    ("detect_beats", "af", "fine-tuned for task 'af'"),
    ("interpret", "garbage", "garbage.safetensors: "),
    ("generate", "missing", "missing.csv"),
])
def test_wrong_checkpoint(files, tmp_path, capsys, tool, ckpt, fragment):
    one_error(capsys, run(tool, files, "good", ckpt=ckpt, out=str(tmp_path)), fragment)


@pytest.mark.parametrize(("tool", "option", "value", "fragment"), [
    ("screen_af", "--sample-rate", "0", "'0' is not a positive number"),
    ("detect_beats", "--sample-rate", "-125", "'-125' is not a positive number"),
    ("generate", "--sample-rate", "nan", "'nan' is not a positive number"),
    ("interpret", "--sample-rate", "0", "'0' is not a positive number"),
    ("screen_af", "--batch-size", "0", "'0' is not a positive integer"),
    ("detect_beats", "--batch-size", "0", "'0' is not a positive integer"),
    ("screen_af", "--threshold", "2", "'2' is not a probability in [0, 1]"),
    ("screen_af", "--stride", "0", "'0' is not a positive integer"),
    ("detect_beats", "--shift", "-1", "'-1' is not a positive integer"),
    ("generate", "--temperature", "0", "'0' is not a positive number"),
])
def test_bad_option_values_are_usage_errors(files, tmp_path, capsys, tool, option, value, fragment):
    """A value that would silently mean something else (rate 0 -> the default rate, batch 0 ->
    one batch of every window) is refused by argparse, naming the option; nothing is written."""
    with pytest.raises(SystemExit) as stop:
        run(tool, files, "good", f"{option}={value}", out=str(tmp_path))
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}" in err and fragment in err, err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("tool", ["detect_beats", "screen_af"])
def test_plot_start_past_the_end_is_one_error_line(files, tmp_path, capsys, tool):
    one_error(capsys, run(tool, files, "good", "--plot-start", "60", out=str(tmp_path)),
              "good.csv: --plot-start 60 s is past the end of the recording (6 s at 50 Hz)")
    assert not list(tmp_path.iterdir())


def test_screen_af_zooms_where_plot_start_says(files, tmp_path, monkeypatch):
    """Over a minute: the zoom row shows [--plot-start, + --plot-seconds)."""
    from heartgpt.inference import plots

    x = np.loadtxt(files["good"], skiprows=1)
    long = tmp_path / "long.csv"
    np.savetxt(long, np.tile(x, 15), fmt="%.6f")  # 90 s at 50 Hz
    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append(fig) or Path(path))
    assert screen_af.main([str(long), "-c", files["af"], "--stride", "250", "--plot-start", "40",
                           "--plot-seconds", "10", "-o", str(tmp_path)]) == 0
    zoom = next(ax for ax in figures[0].axes if ax.get_label() == "zoom")
    assert zoom.get_xlim() == pytest.approx((40, 50), abs=0.05)


def test_shift_needs_a_fine_tuned_model_and_its_base(files, tmp_path, capsys):
    one_error(capsys, interpret.main(["shift", files["good"], "-c", files["lm"], "--base",
                                      files["lm"], "-o", str(tmp_path)]), "lm.safetensors")
    one_error(capsys, interpret.main(["shift", files["good"], "-c", files["af"], "--base",
                                      files["af"], "-o", str(tmp_path)]), "af.safetensors")


@pytest.mark.slow
@pytest.mark.parametrize("tool", ["screen_af", "generate"])
def test_module_entry_point_prints_one_line(files, tmp_path, tool):
    """``python -m heartgpt.<tool>`` itself: exit status 1 and one line, no traceback."""
    proc = subprocess.run(
        [sys.executable, "-m", f"heartgpt.{tool}", files["flat"], "-c", files["lm" if tool ==
         "generate" else "af"], "-o", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("error: ") and "flat.csv" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------- reading
def test_read_signal_formats(tmp_path):
    from heartgpt.data.readers import read_signal
    from heartgpt.errors import InputError

    def write(name: str, text: str):
        path = tmp_path / name
        path.write_text(text)
        return path

    np.testing.assert_array_equal(read_signal(write("h.csv", "PPG\n1\n2.5\n-3\n")), [1, 2.5, -3])
    np.testing.assert_array_equal(read_signal(write("r.csv", "1,2,3\n")), [1, 2, 3])  # one row
    np.testing.assert_array_equal(read_signal(write("w.txt", "1 2 3\n")), [1, 2, 3])
    np.testing.assert_array_equal(read_signal(write("t.txt", "# comment\n1\n2\n\n\n")), [1, 2])
    gap = read_signal(write("g.csv", "1\n\n3\n"), allow_nan=True)  # an empty line: a gap
    assert gap[0] == 1 and np.isnan(gap[1]) and gap[2] == 3
    np.save(tmp_path / "c.npy", np.arange(4.0)[:, None])  # (n, 1) is one channel
    np.testing.assert_array_equal(read_signal(tmp_path / "c.npy"), np.arange(4.0))
    np.save(tmp_path / "m.npy", np.zeros((4, 2)))
    cases = {
        tmp_path / "m.npy": "expected one channel",
        write("two.csv", "a,b\n1,2\n3,4\n"): "expected one channel",
        write("ragged.txt", "1 2\n3\n"): "line 2: 1 values, expected 2",
        write("e.csv", "value\n"): "empty signal",
        write("n.csv", "1\nnan\n3\nnan\n"): "2 NaN/inf sample(s), first at index 1",
        write("x.wav", "RIFF"): "unsupported file type '.wav'",
        write("bad.npy", "not numpy"): "cannot read as a NumPy .npy file",
        tmp_path: "is a directory",
    }
    for path, message in cases.items():
        with pytest.raises(InputError, match=re.escape(message)) as info:
            read_signal(path)
        assert str(info.value).startswith(f"{path}: ")
