"""Shared fixtures: one torch thread per test, and the ../shared folder (released weights,
example inputs, reference outputs)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_ENV = "HEARTGPT_SHARED"


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models run fastest on one thread, and suffer least on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _shared_dir() -> Path:
    return Path(os.environ.get(SHARED_ENV, REPO.parent / "shared")).resolve()


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``$HEARTGPT_SHARED`` (default ``../shared``): fails in CI if missing, else skips."""
    path = _shared_dir()
    if not (path / "weights").is_dir() or not (path / "reference").is_dir():
        reason = (f"shared data not found at {path} (set ${SHARED_ENV} to the folder holding "
                  "weights/, example_inputs/ and reference/)")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session")
def weights_dir(shared_dir: Path) -> Path:
    return shared_dir / "weights"


@pytest.fixture(scope="session")
def reference_dir(shared_dir: Path) -> Path:
    return shared_dir / "reference"


@pytest.fixture(scope="session")
def example_inputs_dir(shared_dir: Path) -> Path:
    return shared_dir / "example_inputs"
