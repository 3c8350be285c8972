"""The browser app: its pieces without a browser, then end to end in headless Chromium.

The end-to-end test starts ``python -m heartgpt.app`` on a free port with tiny checkpoints,
drives every tab (uploads, demo signals, bad inputs) and checks what the page offers against
the library functions run here on the same input. Screenshots of each tab go to the test's
temporary folder, and also to ``$HEARTGPT_APP_SCREENSHOTS`` when set.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from heartgpt.app.background import Stopped, in_background
from heartgpt.app.beats_tab import beats_run
from heartgpt.app.catalog import (
    CheckpointInfo,
    choices,
    default_base,
    default_folders,
    find_checkpoints,
    search_folders,
)
from heartgpt.app.demos import DEMOS, demo_signal
from heartgpt.app.generate_tab import generate_run
from heartgpt.app.inputs import AUTO, load_for, read_input_signal
from heartgpt.app.session import Sessions
from heartgpt.data.signal_quality import load_trust
from heartgpt.data.tokenizer import get_modality, tokenize_context
from heartgpt.errors import InputError
from heartgpt.inference.af_screening import screen_af, write_csv
from heartgpt.inference.beat_detection import detect_beats, write_beats_csv
from heartgpt.inference.generation import generate_tokens
from heartgpt.inference.interpretability import (
    attention_shift,
    estimate_period,
    homonyms,
    trace_signal,
)
from heartgpt.inference.window_trust import TrustContext
from heartgpt.model.checkpoints import WEIGHTS_ENV, load_model
from heartgpt.model.safetensors_file import save_safetensors
from tiny import tiny_gpt

CHROMIUM = Path(os.environ.get("HEARTGPT_CHROMIUM", "/usr/bin/chromium"))
RATE = 50.0
PPG = get_modality("ppg")


def triangle(n: int) -> np.ndarray:
    """A 0.64-s 'cardiac cycle': every value occurs on a rising and on a falling edge."""
    return np.abs((np.arange(n) % 32) - 16.0)


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory) -> Path:
    """Tiny PPG checkpoints: a language model, an AF and a beat fine-tune, one garbage file."""
    d = tmp_path_factory.mktemp("checkpoints")
    lm = tiny_gpt()
    save_safetensors(lm, d / "ppg_lm.safetensors", modality="ppg")
    for seed, task in [(1, "af"), (2, "beats")]:
        tuned = tiny_gpt(out_features=1)
        torch.manual_seed(seed)
        with torch.no_grad():  # the base's trunk, moved a little: a non-zero attention shift
            for name, p in tuned.named_parameters():
                if not name.startswith("head"):
                    p.copy_(lm.state_dict()[name] + 0.05 * torch.randn_like(p))
        save_safetensors(tuned, d / f"ppg_{task}.safetensors", modality="ppg", task=task)
    (d / "broken.safetensors").write_bytes(b"not a checkpoint")
    return d


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("inputs")
    x = triangle(1500)
    files = {"good": d / "context.csv", "nan": d / "gaps.csv", "flat": d / "flat.csv",
             "png": d / "notes.png", "text": d / "words.csv"}
    files["good"].write_text("ppg\n" + "\n".join(f"{v:.6f}" for v in x))
    files["nan"].write_text("\n".join("" if i % 100 == 7 else f"{v:.6f}" for i, v in enumerate(x)))
    files["flat"].write_text("\n".join(["1.5"] * 600))
    files["png"].write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    files["text"].write_text("a\nb\nc\n")
    return files


# ------------------------------------------------------------------------------- pieces
def test_generation_plot_grows_then_equals_generate_tokens(ckpt_dir, tmp_path):
    signal = read_input_signal(None, "synthetic PPG, sinus rhythm (60 s)", 125.0, AUTO)
    reports: list[tuple[int, int]] = []
    frames = []
    for status, figure, files in generate_run(
            signal, str(ckpt_dir / "ppg_lm.safetensors"), tmp_path, new_tokens=45,
            num_samples=2, temperature=0.9, top_k=50, seed=5, mode="exact",
            progress=lambda done, total: reports.append((done, total))):
        frames.append((status, figure.exists(), files))
    assert [f[0] for f in frames[:-1]] == [f"generating: {n} / 45 tokens ..."
                                          for n in (10, 20, 30, 40)]
    assert all(exists and files == [] for _, exists, files in frames[:-1])
    assert frames[-1][0].startswith("Generated 2 x 45 tokens")
    assert reports == [(10, 45), (20, 45), (30, 45), (40, 45), (45, 45)]
    assert not list(tmp_path.glob("frame*.png"))  # the frames go once the figure is made
    model = load_model(ckpt_dir / "ppg_lm.safetensors").model
    context = tokenize_context(signal.samples, 125.0, PPG, 64)
    ref = generate_tokens(model, context, 45, num_samples=2, temperature=0.9, top_k=50, seed=5)
    np.testing.assert_array_equal(np.load(frames[-1][2][1])["samples"], ref)


def test_beats_run_reports_progress(ckpt_dir, tmp_path):
    signal = read_input_signal(None, "synthetic PPG, sinus rhythm (60 s)", 125.0, AUTO)
    reports: list[tuple[int, int]] = []
    status, _, rows, _ = beats_run(signal, str(ckpt_dir / "ppg_beats.safetensors"), tmp_path,
                                   tail="align", shift=None, plot_start=0, plot_seconds=30,
                                   progress=lambda done, total: reports.append((done, total)))
    ref = detect_beats(load_model(ckpt_dir / "ppg_beats.safetensors").model, signal.samples,
                       125.0, "ppg", shift=12)
    assert status.startswith(f"{len(ref.peaks)} beats in 1.0 min") and len(rows) == len(ref.peaks)
    assert reports[-1] == (3000, 3000) and len(reports) > 1


def test_background_work_reports_returns_raises_and_stops():
    def count(report, n=3):
        for i in range(n):
            report(i)
        return "done"

    work = in_background(count)
    assert [next(work), next(work), next(work)] == [(0,), (1,), (2,)]
    with pytest.raises(StopIteration) as end:
        next(work)
    assert end.value.value == "done"

    def fail(report):
        report(0)
        raise ValueError("bad top-k")

    with pytest.raises(ValueError, match="bad top-k"):
        list(in_background(fail))

    stopped = []

    def endless(report):
        try:
            while True:
                report(0)
        except Stopped:
            stopped.append(True)
            raise

    work = in_background(endless)
    next(work)
    work.close()  # the reader left: the next report ends the work
    deadline = time.monotonic() + 10
    while not stopped and time.monotonic() < deadline:
        time.sleep(0.01)
    assert stopped


@pytest.mark.parametrize("name,rate,allow_nan,fragment", [
    ("png", None, False, "notes.png: unsupported file type '.png'"),
    ("text", None, False, "words.csv: line 2: not a number: 'b'"),
    ("nan", None, False, "gaps.csv: 15 NaN/inf sample(s), first at index 7"),
    ("flat", None, False, "flat.csv: flat signal: all 600 samples equal 1.5"),
    ("flat", None, True, "flat.csv: flat signal"),
    ("good", -5, False, "sampling rate: must be a positive number"),
    (None, None, False, "upload a file or pick a demo signal"),
])
def test_bad_inputs_say_what_is_wrong(inputs, name, rate, allow_nan, fragment):
    with pytest.raises(InputError, match=re.escape(fragment)):
        read_input_signal(str(inputs[name]) if name else None, None, rate, AUTO, allow_nan)


def test_nan_samples_allowed_where_windows_skip(inputs):
    x = read_input_signal(str(inputs["nan"]), None, 0, AUTO, allow_nan=True).samples
    assert len(x) == 1500 and np.isnan(x).sum() == 15


def test_wrong_modality_is_refused(ckpt_dir, inputs):
    ecg = read_input_signal(str(inputs["good"]), None, None, "ecg")
    with pytest.raises(InputError, match="context.csv: is ECG but checkpoint ppg_lm.safetensors "
                                        "is a PPG model"):
        load_for(str(ckpt_dir / "ppg_lm.safetensors"), "lm", ecg)
    demo = read_input_signal(None, "synthetic ECG, sinus rhythm (60 s)", 500, AUTO)
    with pytest.raises(InputError, match="is ECG but checkpoint"):
        load_for(str(ckpt_dir / "ppg_lm.safetensors"), "lm", demo)
    ppg = read_input_signal(str(inputs["good"]), None, None, AUTO)
    with pytest.raises(InputError, match="ppg_af.safetensors: is a fine-tuned model"):
        load_for(str(ckpt_dir / "ppg_af.safetensors"), "lm", ppg)


def test_catalog_lists_what_each_tab_can_use(ckpt_dir, caplog):
    infos = find_checkpoints([ckpt_dir])
    assert [i.path.name for i in infos] == ["ppg_af.safetensors", "ppg_beats.safetensors",
                                            "ppg_lm.safetensors"]
    assert "broken.safetensors" in caplog.text
    names = {role: [Path(p).name for _, p in choices(infos, role)]
             for role in ("lm", "af", "beats", "any")}
    assert names == {"lm": ["ppg_lm.safetensors"], "af": ["ppg_af.safetensors"],
                     "beats": ["ppg_beats.safetensors"],
                     "any": ["ppg_lm.safetensors", "ppg_af.safetensors",
                             "ppg_beats.safetensors"]}
    assert Path(default_base(infos, str(ckpt_dir / "ppg_af.safetensors"))).name == \
        "ppg_lm.safetensors"
    with pytest.raises(FileNotFoundError, match="no such checkpoint folder"):
        find_checkpoints([ckpt_dir / "missing"])


def test_the_af_and_beat_tabs_list_only_heads_they_read_as_trained():
    """A 1-output regression (heart rate) is no probability: only the Apply tab lists it; an
    attention-pooled AF head is one probability per window: the AF tab reads it."""
    def info(task: str, head: dict) -> CheckpointInfo:
        return CheckpointInfo(Path(f"{task}.ckpt"), task, "ecg", task, 1, 2, 2, head)

    regress = info("regress", {"kind": "regress", "outputs": 1})
    attention_af = info("af", {"kind": "classify", "outputs": 1, "pooling": "attention"})
    tag_beats = info("beats", {"kind": "tag", "outputs": 1, "stride": 1})
    assert [regress.fits(r) for r in ("af", "beats", "any")] == [False, False, True]
    assert [attention_af.fits(r) for r in ("af", "beats")] == [True, False]
    assert [tag_beats.fits(r) for r in ("af", "beats")] == [False, True]


def test_folders_given_are_searched_as_given(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights").mkdir()
    caplog.set_level(logging.INFO, logger="heartgpt.app")
    assert search_folders(["mine", tmp_path / "theirs"]) == [Path("mine"), tmp_path / "theirs"]
    assert not caplog.text  # a missing one is find_checkpoints' error, not skipped


def test_default_folders_are_the_weights_folders_and_outputs(tmp_path, monkeypatch, caplog):
    tmp_path = tmp_path.resolve()  # the folders are absolute, symbolic links resolved
    monkeypatch.chdir(tmp_path)
    env = tmp_path / "released"
    monkeypatch.setenv(WEIGHTS_ENV, str(env))
    caplog.set_level(logging.INFO, logger="heartgpt.app")
    assert default_folders() == [env, tmp_path / "weights", tmp_path / "outputs"]
    for d in (env, tmp_path / "outputs"):
        d.mkdir()
    assert search_folders([]) == [env, tmp_path / "outputs"]  # ./weights does not exist
    assert f"searching {env}, {tmp_path / 'outputs'}" in caplog.text
    assert f"not found: {tmp_path / 'weights'}" in caplog.text
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "outputs"))  # listed once
    assert default_folders() == [tmp_path / "outputs", tmp_path / "weights"]


def test_no_default_folder_says_how_to_give_one(tmp_path, monkeypatch, caplog):
    tmp_path = tmp_path.resolve()
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    caplog.set_level(logging.INFO, logger="heartgpt.app")
    assert search_folders([]) == []
    warning = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1
    text = warning[0].getMessage()
    assert f"${WEIGHTS_ENV} (not set)" in text and str(tmp_path / "weights") in text
    assert "python -m heartgpt.app path/to/weights" in text and f"set ${WEIGHTS_ENV}" in text
    from heartgpt.app.context import AppContext
    from heartgpt.app.ui import _intro

    intro = _intro(AppContext([], sessions=None, folders=[]))  # what the page then says
    assert "No checkpoints found" in intro and "none of `$HEARTGPT_WEIGHTS`" in intro
    assert "set `$HEARTGPT_WEIGHTS`" in intro


def test_default_folders_find_the_checkpoints(ckpt_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    shutil.copytree(ckpt_dir, tmp_path / "outputs" / "run")
    infos = find_checkpoints(search_folders([]))
    assert sorted(i.path.name for i in infos) == ["ppg_af.safetensors", "ppg_beats.safetensors",
                                                  "ppg_lm.safetensors"]


def test_demo_signals():
    for name, d in DEMOS.items():
        if d.seconds <= 60:
            x = demo_signal(name)
            assert len(x) == d.seconds * d.sample_rate and np.isfinite(x).all() and x.std() > 0
            assert not x.flags.writeable  # one cached array shared by every session
    with pytest.raises(ValueError, match="unknown demo signal"):
        demo_signal("nope")


def test_sessions_keep_nothing_after_the_session(tmp_path):
    sessions = Sessions(tmp_path)
    upload = sessions.root / "abc123" / "rec.csv"
    upload.parent.mkdir()
    upload.write_text("1\n2\n")
    first = sessions.run_dir("s1", "beats")
    (first / "out.csv").write_text("x")
    second = sessions.run_dir("s1", "beats")
    assert not first.exists() and second.exists()  # a new run replaces the tool's last
    other = sessions.run_dir("s2", "beats")
    sessions.track_upload("s1", upload)
    sessions.track_upload("s1", tmp_path / "outside.csv")  # not ours: never deleted
    sessions.end("s1")
    assert not second.exists() and not upload.parent.exists() and other.exists()
    sessions.close()
    assert not sessions.root.exists() and tmp_path.exists()


# ------------------------------------------------------------------------------- browser
def _need_browser() -> None:
    reason = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        reason = "playwright is not installed (pip install -e '.[dev]')"
    if reason is None and not CHROMIUM.exists():
        reason = f"{CHROMIUM} not found (apt-get install chromium, or set $HEARTGPT_CHROMIUM)"
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class App:
    """A running app, a browser page on it, and what the test needs to check afterwards."""

    proc: subprocess.Popen
    url: str
    temp: Path  # $GRADIO_TEMP_DIR of the app
    log: Path
    shots: Path
    page: object = None
    context: object = None
    external: list[str] = field(default_factory=list)  # requests that tried to leave

    def shot(self, tab: str, *figures: str) -> None:
        """Screenshot of the page once the ``figures`` (element ids) have loaded."""
        for elem in figures:
            self.page.locator(f"#{elem} img").wait_for()
        self.page.wait_for_function("Array.from(document.images).every(i => i.complete)")
        self.page.screenshot(path=str(self.shots / f"app_{tab}.png"), full_page=True)

    def close_page(self) -> None:
        """Close the browser tab (Gradio's unload: the session ends)."""
        if self.context is not None:
            self.context.unroute("**/*")
            self.context.close()
            self.context = None


def _start(folders: list[Path], tmp_path: Path) -> App:
    temp, shots = tmp_path / "gradio", tmp_path / "screenshots"
    temp.mkdir()
    shots.mkdir()
    log = tmp_path / "server.log"
    port = _free_port()
    env = {**os.environ, "GRADIO_TEMP_DIR": str(temp), "OMP_NUM_THREADS": "1",
           "MPLBACKEND": "Agg"}
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "heartgpt.app", *map(str, folders),
                                 "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    app = App(proc, f"http://127.0.0.1:{port}/", temp, log, shots)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the app exited ({proc.returncode}):\n{log.read_text()}")
        try:
            with urllib.request.urlopen(app.url, timeout=2) as r:
                if r.status == 200:
                    return app
        except OSError:
            time.sleep(0.3)
    proc.kill()
    pytest.fail(f"the app did not answer on {app.url}:\n{log.read_text()}")


@contextmanager
def _running_app(folders: list[Path], tmp_path: Path) -> Iterator[App]:
    """Start the app, open it in headless Chromium with no network beyond the app; at the
    end stop it with SIGTERM (as Ctrl-C) and keep the screenshots if asked to."""
    _need_browser()
    from playwright.sync_api import sync_playwright

    app = _start(folders, tmp_path)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM),
                                         args=["--headless", "--no-sandbox", "--disable-gpu"])

            def local_only(route) -> None:
                if route.request.url.startswith((app.url, "data:", "blob:")):
                    route.continue_()
                else:
                    app.external.append(route.request.url)
                    route.abort()

            app.context = browser.new_context(viewport={"width": 1400, "height": 1000})
            app.context.route("**/*", local_only)
            app.page = app.context.new_page()
            app.page.set_default_timeout(60_000)
            app.page.goto(app.url)
            yield app
            app.close_page()
            browser.close()
    finally:
        app.proc.send_signal(signal.SIGTERM)
        try:
            app.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            app.proc.kill()
        keep = os.environ.get("HEARTGPT_APP_SCREENSHOTS")
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            for shot in app.shots.glob("*.png"):
                shutil.copy(shot, Path(keep) / shot.name)


def _status(page, prefix: str, fragment: str, timeout: float = 60_000) -> str:
    """Wait for the tab's status line to contain ``fragment``; return the whole line."""
    sel = f"#{prefix}-status"
    try:
        page.wait_for_function(
            "([sel, f]) => (document.querySelector(sel)?.innerText ?? '').includes(f)",
            arg=[sel, fragment], timeout=timeout)
    except Exception:
        pytest.fail(f"{sel} never showed {fragment!r}; it shows {page.inner_text(sel)!r}")
    return " ".join(page.inner_text(sel).split())


def _upload(page, prefix: str, path: Path) -> None:
    clear = page.locator(f"#{prefix}-file button[aria-label='Clear']")
    if clear.count():
        clear.first.click()
    page.set_input_files(f"#{prefix}-file input[type=file]", str(path))


def _pick(page, elem_id: str, option: str) -> None:
    page.click(f"#{elem_id} input")
    page.get_by_role("option", name=option, exact=True).click()


def _tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def _downloads(page, prefix: str) -> dict[str, bytes]:
    """The files the tab offers, fetched as the browser would."""
    links = page.locator(f"#{prefix}-files a[data-testid='download-link']")
    links.first.wait_for()
    out = {}
    for i in range(links.count()):
        href = links.nth(i).get_attribute("href")
        out[href.rsplit("/", 1)[-1]] = page.request.get(href).body()
    return out


def _csv(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode())))


def _library_csv(write, result, tmp_path: Path, *args) -> bytes:
    """What the library's ``write`` makes of ``result``, byte for byte."""
    return write(tmp_path / "library.csv", result, *args).read_bytes()


@pytest.mark.slow
def test_app_in_a_browser(ckpt_dir, inputs, tmp_path):
    from playwright.sync_api import expect

    models = {k: load_model(ckpt_dir / f"ppg_{k}.safetensors").model
              for k in ("lm", "af", "beats")}
    x = triangle(1500)
    with _running_app([ckpt_dir], tmp_path) as app:
        page = app.page
        assert "3 checkpoint(s)" in page.inner_text("#intro")

        # -- generation, after bad uploads: each says what is wrong, the app keeps going
        for name, fragment in [("png", "notes.png: unsupported file type '.png'"),
                               ("text", "words.csv: line 2: not a number: 'b'"),
                               ("nan", "gaps.csv: 15 NaN/inf sample(s), first at index 7"),
                               ("flat", "flat.csv: flat signal: all 600 samples equal 1.5")]:
            _upload(page, "gen", inputs[name])
            assert _status(page, "gen", fragment).startswith("Error:")
        _upload(page, "gen", inputs["good"])
        _status(page, "gen", "context.csv: 1500 samples")
        page.check("#gen-modality input[value='ecg']")
        page.click("#gen-run")
        _status(page, "gen", "context.csv: is ECG but checkpoint ppg_lm.safetensors is a PPG "
                             "model")
        page.check("#gen-modality input[value='auto']")
        page.fill("#gen-new-tokens input", "45")
        page.fill("#gen-samples input", "2")
        page.fill("#gen-seed input", "3")
        page.click("#gen-run")
        _status(page, "gen", "Generated 2 x 45 tokens")
        page.locator("#gen-figure img").wait_for()
        files = _downloads(page, "gen")
        assert set(files) == {"context_generated.csv", "context_generated.npz",
                              "context_generated.png"}
        ref = generate_tokens(models["lm"], tokenize_context(x, RATE, PPG, 64), 45,
                              num_samples=2, seed=3)
        rows = _csv(files["context_generated.csv"])
        assert rows[0] == ["step", "sample_0", "sample_1"]
        np.testing.assert_array_equal(np.array(rows[1:], dtype=np.int64)[:, 1:].T, ref)
        app.shot("generation")

        # -- attention
        _tab(page, "Attention")
        _upload(page, "att", inputs["good"])
        page.fill("#att-layer input", "1")
        page.click("#att-run")
        text = _status(page, "att", "layer 1 shown")
        trace = trace_signal(models["lm"], x, RATE, PPG)
        assert f"Cardiac period {estimate_period(trace.tokens, RATE)} samples" in text
        npz = np.load(io.BytesIO(_downloads(page, "att")["context_trace.npz"]))
        np.testing.assert_allclose(npz["attentions"], trace.attentions[[1]], atol=1e-6)
        np.testing.assert_allclose(npz["hidden_states"], trace.hidden_states, atol=1e-6)
        np.testing.assert_array_equal(npz["tokens"], trace.tokens)
        for elem in ("att-heads", "att-aggregate", "att-folded"):
            page.locator(f"#{elem} img").wait_for()
        app.shot("attention")

        # -- vector similarity
        _tab(page, "Vector similarity")
        _upload(page, "hom", inputs["good"])
        page.click("#hom-run")
        res = homonyms(trace.hidden_states, trace.tokens)
        _status(page, "hom", f"Token value {res.value}:")
        got = np.array(_csv(_downloads(page, "hom")["context_homonyms.csv"])[1:], dtype=float)
        np.testing.assert_allclose(got[:, 1], res.within, atol=1e-6)
        np.testing.assert_allclose(got[:, 2], res.across, atol=1e-6)
        grid = page.locator("#hom-table [role=grid]")
        expect(grid).to_have_attribute("aria-rowcount", str(len(res.within) + 1))
        expect(grid.locator("[data-testid='cell-2-2']")).to_have_text(
            f"{round(float(res.across[2]), 4)}")
        app.shot("similarity", "hom-figure")

        # -- AF screening with the attention shift (defaults: the AF model and its base)
        _tab(page, "AF screening")
        _upload(page, "af", inputs["nan"])  # NaN windows are skipped here, not an error
        _status(page, "af", "gaps.csv: 1500 samples, 15 NaN/inf")
        page.click("#af-run")
        gaps = read_input_signal(str(inputs["nan"]), None, None, AUTO, True).samples
        trust = TrustContext(load_trust())  # the app's checks (the tiny model: no reference)
        af = screen_af(models["af"], gaps, RATE, "ppg", trust=trust)
        text = _status(page, "af", "gaps.csv: P(AF) =")
        assert f"P(AF) = {af.recording_prob:.4f} ({af.averaged_text()}" in text
        assert f"{len(af.skipped)} window(s) skipped" in text
        _upload(page, "af", inputs["good"])
        page.click("#af-run")
        assert "Attention shift (last 64 samples)" in _status(page, "af", "context.csv: P(AF)")
        files = _downloads(page, "af")
        assert files["context_af.csv"] == _library_csv(
            write_csv, screen_af(models["af"], x, RATE, "ppg", trust=trust), tmp_path)
        shift = attention_shift(models["lm"], models["af"], tokenize_context(x, RATE, PPG, 64))
        got = np.array(_csv(files["context_attention_shift.csv"])[1:], dtype=np.float64)
        np.testing.assert_allclose(got[:, 2], shift, atol=1e-7)
        assert np.abs(shift).max() > 1e-4
        page.locator("#af-shift img").wait_for()
        app.shot("af", "af-figure", "af-shift")

        # -- beat detection on a demo signal
        _tab(page, "Beat detection")
        _pick(page, "beats-demo", "synthetic PPG, sinus rhythm (60 s)")
        expect(page.locator("#beats-rate input")).to_have_value("125")
        page.click("#beats-run")
        demo = demo_signal("synthetic PPG, sinus rhythm (60 s)")
        beats = detect_beats(models["beats"], demo, 125.0, "ppg", shift=12)
        _status(page, "beats", f"{len(beats.peaks)} beats in 1.0 min")
        files = _downloads(page, "beats")
        assert files["demo_ppg_sinus_beats.csv"] == _library_csv(
            write_beats_csv, beats, tmp_path, 125.0)
        grid = page.locator("#beats-table [role=grid]")
        expect(grid).to_have_attribute("aria-rowcount", str(len(beats.peaks) + 1))
        expect(grid.locator("[data-testid='cell-0-2']")).to_have_text(
            f"{round(float(beats.heights[0]), 4)}")
        app.shot("beats", "beats-figure")

        # -- an hour of PPG (windows every 6 samples: ~15 s) shows progress and leaves the
        # other tabs free: a generation starts and ends meanwhile
        _pick(page, "beats-demo", "synthetic PPG, sinus rhythm (1 hour)")
        page.fill("#beats-shift input", "6")
        page.click("#beats-run")
        page.locator("#beats-figure .progress-text").first.wait_for()
        _tab(page, "Generation")
        _pick(page, "gen-demo", "synthetic PPG, sinus rhythm (60 s)")
        expect(page.locator("#gen-rate input")).to_have_value("125")  # the pick cleared the file
        page.fill("#gen-new-tokens input", "10")
        page.click("#gen-run")
        _status(page, "gen", "Generated 2 x 10 tokens after the last 64 samples of demo:")
        assert "beats in 60.0 min" not in page.inner_text("#beats-status")
        _tab(page, "Beat detection")
        app.shot("beats_progress")
        _status(page, "beats", "beats in 60.0 min", timeout=180_000)
        # the figure loaded before the page closes (closing deletes the session's files: a fetch
        # still under way on a loaded machine would meet a missing file)
        page.wait_for_function("() => { const imgs = document.querySelectorAll('#beats-figure img');"
                               " return imgs.length > 0 && [...imgs].every("
                               "i => i.complete && i.naturalWidth > 0); }", timeout=60_000)

        # -- closing the page ends the session: its uploads and results go
        root = next(app.temp.glob("heartgpt-app-*"))
        assert any((root / "sessions").iterdir())
        app.close_page()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (
                any((root / "sessions").iterdir()) or any(root.rglob("*.csv"))):
            time.sleep(0.2)
        assert not any((root / "sessions").iterdir())
        assert not any(root.rglob("*.csv")), list(root.rglob("*.csv"))
    assert not app.external, app.external
    log = app.log.read_text()
    assert app.proc.returncode == 0, log
    assert "Running on local URL:  http://127.0.0.1:" in log
    assert not any(app.temp.iterdir()), list(app.temp.rglob("*"))  # nothing left at exit
    assert "Traceback" not in log, log


@pytest.mark.slow
@pytest.mark.shared
def test_app_with_released_weights(weights_dir, example_inputs_dir, tmp_path):
    """The released checkpoints on their example inputs give the released GUIs' numbers (and
    the screenshots in docs/figures/app_*.png: ``HEARTGPT_APP_SCREENSHOTS=docs/figures``)."""
    ex = example_inputs_dir
    with _running_app([weights_dir], tmp_path) as app:
        page = app.page
        assert "5 checkpoint(s)" in page.inner_text("#intro")

        _pick(page, "gen-checkpoint", "PPGPT_500k_iters.zip (PPG, pre-trained)")
        _upload(page, "gen", ex / "example_context_PPG.csv")
        page.fill("#gen-new-tokens input", "250")
        page.fill("#gen-samples input", "2")
        page.check("#gen-mode input[value='cached']")
        page.click("#gen-run")
        _status(page, "gen", "Generated 2 x 250 tokens after the last 500 samples")
        page.locator("#gen-figure img").wait_for()
        app.shot("generation", "gen-figure")

        _tab(page, "AF screening")
        _upload(page, "af", ex / "example_context_ECG_AFib1.csv")
        page.click("#af-run")
        text = _status(page, "af", "P(AF) = 0.9914 (mean of 1 reliable window of 1; 500 samples "
                                   "each)")
        assert "Attention shift (last 500 samples)" in text  # against ECGPT_560k, the default
        app.shot("af", "af-figure", "af-shift")

        _tab(page, "Beat detection")
        _upload(page, "beats", ex / "example_context_PPG_beat_detect_long_input.csv")
        page.click("#beats-run")
        _status(page, "beats", "150 beats in 2.3 min of "
                               "example_context_PPG_beat_detect_long_input.csv, median "
                               "confidence 0.6543 (High quality)")
        app.shot("beats", "beats-figure")
    assert not app.external, app.external
    assert app.proc.returncode == 0, app.log.read_text()


@pytest.fixture(scope="module")
def hr_regressor(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny fine-tune of the targets demo's heart rate (a regression: values in bpm) in a
    folder of its own, and one of the demo's recordings (500 Hz)."""
    from heartgpt.training.run import train
    from training_helpers import FAST, TINY_MODEL, build_tiny_targets, compose_train

    root = tmp_path_factory.mktemp("hr_app")
    ecg = build_tiny_targets(root)
    cfg = compose_train([*FAST, *TINY_MODEL, "model.block_size=500", "module.pretrained=null",
                         "test=false", "trainer.max_steps=4", "task=regress",
                         "data.val_fraction=0.2", "data.test_fraction=0.3",
                         f"data.shard_dir={ecg / 'hr'}"],
                        data_dir=root, output_dir=root / "run", log_dir=root / "logs")
    train(cfg)
    (ckpt,) = sorted((root / "run").rglob("*.ckpt"))[-1:]
    folder = root / "models"
    folder.mkdir()
    shutil.copy(ckpt, folder / "demo_hr.ckpt")
    return folder / "demo_hr.ckpt", sorted((ecg / "recordings").glob("*.npy"))[0]


@pytest.mark.slow
def test_the_apply_tab_shows_a_regressors_values(hr_regressor, tmp_path):
    """Any checkpoint on an upload: the demo HR regressor's heart rate per window, in bpm,
    the numbers of ``heartgpt.apply`` (so of ``predict``) on the same signal."""
    from heartgpt.inference.apply import apply

    ckpt, recording = hr_regressor
    samples = np.load(recording).astype(np.float64)
    expected = apply(ckpt, samples, 500.0)
    assert expected.mode == "head"
    with _running_app([ckpt.parent], tmp_path) as app:
        page = app.page
        _tab(page, "Apply any model")
        _upload(page, "apply", recording)
        _status(page, "apply", f"{recording.name}: {len(samples)} samples")
        page.fill("#apply-rate input", "500")
        page.click("#apply-run")
        text = _status(page, "apply", "(mode=head)")
        median = expected.recording["median_hr_bpm"]
        assert f"median_hr_bpm {median:.4g}" in text, text
        rows = _csv(_downloads(page, "apply")[f"{recording.stem}_head_rows.csv"])
        column = rows[0].index("hr_bpm")
        got = [float(r[column]) for r in rows[1:]]
        np.testing.assert_allclose(got, [w["hr_bpm"] for w in expected.windows], atol=1e-6)
        grid = page.locator("#apply-table [role=grid]")
        assert "hr_bpm" in page.inner_text("#apply-table")
        from playwright.sync_api import expect

        expect(grid).to_have_attribute("aria-rowcount", str(len(expected.windows) + 1))
        app.shot("apply", "apply-figure")
    assert not app.external, app.external
    assert "Traceback" not in app.log.read_text()
