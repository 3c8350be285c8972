"""``python -m heartgpt.app`` without the ``app`` extra (gradio): one line naming the extra."""

from __future__ import annotations

import sys

import pytest

from heartgpt.app.__main__ import main


def test_the_app_without_gradio_names_the_extra_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio -> ImportError
    assert main(["no/such/folder"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "pip install 'heartgpt[app]'" in err and "gradio" in err


def test_the_app_extra_is_in_pyproject():
    from pathlib import Path

    import tomllib

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    assert not any(d.startswith("gradio") for d in project["dependencies"])  # core stays lean
    extras = project["optional-dependencies"]
    assert any(d.startswith("gradio") for d in extras["app"])
    assert any(d.startswith("gradio") for d in extras["dev"])  # make setup installs it


@pytest.mark.parametrize("argv", [["--help"]])
def test_help_needs_no_gradio(monkeypatch, argv):
    monkeypatch.setitem(sys.modules, "gradio", None)
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 0
