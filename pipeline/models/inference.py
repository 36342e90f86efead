"""Classifying many images without holding every activation at once: the one chunked softmax."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def class_probabilities(model: nn.Module, images: torch.Tensor,
                        batch_size: int | None = None) -> torch.Tensor:
    """Softmax (N, K) of ``model`` over ``images`` (N, 3, H, W), ``batch_size`` images per
    forward pass (None: all at once), in float32 whatever the model computes in."""
    if len(images) == 0:
        return torch.empty(0, 0)
    step = batch_size or len(images)
    return torch.cat([model(images[i:i + step]).float().softmax(dim=1)
                      for i in range(0, len(images), step)])
