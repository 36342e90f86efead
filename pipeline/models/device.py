"""Where the classifier runs: device choice and the fast path (fusion, channels_last, compile)."""

from __future__ import annotations

import logging

import torch
from torch import nn

from fidoflow.pipeline.models.fusion import fuse_frozen

log = logging.getLogger(__name__)


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` picks the GPU when there is one; an explicit CUDA device without CUDA is an error."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {spec!r} requested but this torch build sees no CUDA GPU")
    return device


def default_batch_size(device: torch.device) -> int:
    """Images per optimisation step when the user does not say: a GPU needs many to be busy; on a
    CPU one image's 2·B blends already fill the cores and larger steps fall out of cache (N = 4
    was 10–20 % slower per image than N = 1 on the 2-core box, bench/RESULTS.md)."""
    return 8 if device.type == "cuda" else 1


def prepare_module(module: nn.Module, device: torch.device, compile_model: bool = False,
                   input_size: tuple[int, int] | None = None) -> nn.Module:
    """The frozen classifier as attribution runs it on ``device``.

    With ``input_size`` known, BatchNorms and symmetric paddings are folded into the
    convolutions (checked on a probe batch; see pipeline/models/fusion.py). channels_last memory is used on
    every device (oneDNN's and cuDNN's faster convolution layout: 1.2× on the 2-core CPU);
    ``torch.compile`` when asked (slower first step, faster steady state).
    """
    module = module.to(device).eval()
    if input_size is not None:
        probe = torch.rand(2, 3, *input_size, generator=torch.Generator().manual_seed(0)).to(device)
        module, report = fuse_frozen(module, probe)
        log.info("classifier fusion: %s", report)
    module = module.to(memory_format=torch.channels_last)
    if compile_model:
        module = torch.compile(module)
    return module
