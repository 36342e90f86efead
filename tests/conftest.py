"""Shared fixtures: a toy classifier whose evidence is a known square, and small photo folders."""

from __future__ import annotations

import os
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
