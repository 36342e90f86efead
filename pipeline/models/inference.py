"""Classifying many images without holding every activation at once: the one chunked forward
pass (logits) and softmax of fidoflow."""

from __future__ import annotations

import contextlib

import torch
from torch import nn


def class_logits(model: nn.Module, images: torch.Tensor, batch_size: int | None = None,
                 autocast: bool = False) -> torch.Tensor:
    """Logits (N, K) in float32 of ``images`` (N, 3, H, W), ``batch_size`` images per forward
    pass (None: all at once); ``autocast``: bf16 on a CUDA device."""
    context = (torch.autocast("cuda", dtype=torch.bfloat16) if autocast
               else contextlib.nullcontext())
    step = batch_size or max(len(images), 1)
    with context:
        if len(images) <= step:
            return model(images).float()
        return torch.cat([model(images[i:i + step]).float()
                          for i in range(0, len(images), step)])


@torch.no_grad()
def class_probabilities(model: nn.Module, images: torch.Tensor,
                        batch_size: int | None = None) -> torch.Tensor:
    """Softmax (N, K) of ``model`` over ``images`` (N, 3, H, W), ``batch_size`` images per
    forward pass (None: all at once), in float32 whatever the model computes in."""
    if len(images) == 0:
        return torch.empty(0, 0)
    return class_logits(model, images, batch_size).softmax(dim=1)
