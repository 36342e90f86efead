"""Where the classifier runs: device choice and the GPU fast path (channels_last, compile)."""

from __future__ import annotations

import torch
from torch import nn


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` picks the GPU when there is one; an explicit CUDA device without CUDA is an error."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {spec!r} requested but this torch build sees no CUDA GPU")
    return device


def prepare_module(module: nn.Module, device: torch.device, compile_model: bool = False) -> nn.Module:
    """Move to ``device``; on a GPU use channels_last memory (faster convolutions under bf16
    autocast) and, when asked, ``torch.compile`` (slower first step, faster steady state)."""
    module = module.to(device).eval()
    if device.type == "cuda":
        module = module.to(memory_format=torch.channels_last)
    if compile_model:
        module = torch.compile(module)
    return module
