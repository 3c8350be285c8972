"""The notebooks in ``notebooks/``: committed without outputs, and (slow) each runs top to bottom
with nbclient from ``notebooks/``, writing under a temporary folder."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NEEDS_SHARED = {"02_interpretability.ipynb", "03_finetune_af.ipynb"}
TIMEOUT_S = 600  # per cell; on a busy 2-core CPU each notebook takes well under this in total


def notebook_names() -> list[str]:
    return sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))


def test_the_notebooks_are_there():
    assert notebook_names() == ["01_quickstart.ipynb", "02_interpretability.ipynb",
                                "03_finetune_af.ipynb"]


@pytest.mark.parametrize("name", notebook_names())
def test_committed_without_outputs(name):
    nb = json.loads((NOTEBOOKS / name).read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code, name
    for i, cell in enumerate(code):
        assert cell["outputs"] == [] and cell["execution_count"] is None, f"{name}: code cell {i}"
    assert nb["metadata"]["kernelspec"]["name"] == "python3"


@pytest.mark.slow
@pytest.mark.parametrize("name", notebook_names())
def test_runs(name, request, tmp_path, monkeypatch):
    import nbclient
    import nbformat

    if name in NEEDS_SHARED:  # fails under CI=true when ../shared is missing, skips otherwise
        monkeypatch.setenv("HEARTGPT_SHARED", str(request.getfixturevalue("shared_dir")))
    monkeypatch.setenv("HEARTGPT_NOTEBOOK_OUT", str(tmp_path))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as fast for these small models, kinder to a busy CPU
    monkeypatch.setenv("WANDB_MODE", "disabled")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError naming the failing cell
    print(f"{name}: {time.perf_counter() - start:.0f} s")
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
                 for o in c.outputs)
    assert images >= 2, f"{name}: {images} figures shown"
    assert any(tmp_path.iterdir()), f"{name} wrote nothing under HEARTGPT_NOTEBOOK_OUT"
