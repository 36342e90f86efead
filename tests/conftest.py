"""Shared fixtures: a toy classifier whose evidence is a known square, and small photo folders."""

from __future__ import annotations

import os
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

SQUARE = (slice(8, 16), slice(12, 20))  # rows, cols of the evidence in a 32x32 image


class SquareEvidence(nn.Module):
    """Class 1 wins when the mean brightness inside SQUARE exceeds 0.5; class 0 is a constant."""

    def __init__(self, gain: float = 40.0) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(gain))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        evidence = x[:, :, SQUARE[0], SQUARE[1]].mean(dim=(1, 2, 3))
        return torch.stack([torch.full_like(evidence, 0.5 * self.gain.item()), self.gain * evidence], 1)


def square_image(n: int = 1) -> torch.Tensor:
    """Dim textured background, bright square where the evidence is."""
    gen = torch.Generator().manual_seed(1)
    x = 0.1 + 0.1 * torch.rand(n, 3, 32, 32, generator=gen)
    x[:, :, SQUARE[0], SQUARE[1]] = 0.9
    return x


@pytest.fixture
def square_model() -> nn.Module:
    return SquareEvidence()


@pytest.fixture
def photo_folder(tmp_path: Path) -> Path:
    """Three small real photos (scikit-image), one in a sub-folder."""
    import skimage.data

    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    for name, rel in (("chelsea", "chelsea.png"), ("coffee", "coffee.jpg"), ("rocket", "sub/rocket.png")):
        pixels = getattr(skimage.data, name)()
        Image.fromarray(np.asarray(pixels)).resize((96, 64)).save(root / rel)
    return root


SHARED_API = "FIDOFLOW_TEST_PREFECT_API_URL"  # the run's one Prefect server, for every worker


def pytest_configure(config: pytest.Config) -> None:
    """Start one Prefect API server for the whole test run (it boots in the background while
    tests are collected); pytest-xdist's workers inherit its URL. Not for ``-m "not slow"``."""
    if hasattr(config, "workerinput") or SHARED_API in os.environ:
        return
    if "not slow" in (config.option.markexpr or ""):
        return
    from fidoflow.flows.server import api_server

    stack = ExitStack()
    api = stack.enter_context(api_server())
    os.environ.pop("PREFECT_API_URL", None)  # tests opt in one by one (shared_prefect)
    os.environ[SHARED_API] = api.url
    config.stash[SERVER] = stack


def pytest_unconfigure(config: pytest.Config) -> None:
    stack = config.stash.get(SERVER, None)
    if stack is not None:
        stack.close()
        os.environ.pop(SHARED_API, None)


SERVER = pytest.StashKey[ExitStack]()


@pytest.fixture(scope="session")
def prefect_server() -> str:
    """The test run's Prefect API server (each CLI run would otherwise start its own: seconds
    of CPU on a 2-core machine, every time), once it answers."""
    import time
    import urllib.request

    url = os.environ.get(SHARED_API)
    if url is None:
        pytest.fail("no shared Prefect server: tests/conftest.py starts one unless -m \"not slow\"")
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return url
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


@pytest.fixture(autouse=True)
def shared_prefect(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Slow tests talk to the run's server unless marked ``own_server`` (those that check the
    server a run starts for itself)."""
    node = request.node
    if node.get_closest_marker("slow") and not node.get_closest_marker("own_server"):
        monkeypatch.setenv("PREFECT_API_URL", request.getfixturevalue("prefect_server"))


