"""A classifier that kills its process on one kind of picture (a pure red one), as a decoder
or model crash on a poison image would: for the worker-death tests (tests/test_faults.py)."""

from __future__ import annotations

import os

import torch
from torch import nn


class PoisonNet(nn.Module):
    """Two classes from the mean colour; ``os._exit`` on an all-red image."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        colour = x.mean(dim=(2, 3))
        if bool(((colour[:, 0] > 0.95) & (colour[:, 1] < 0.05) & (colour[:, 2] < 0.05)).any()):
            os._exit(7)
        return self.head(colour)
