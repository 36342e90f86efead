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


GPU_MEMORY_SHARE = 0.6  # of the free GPU memory a step may fill (the rest: fills, masks, cache)
GPU_STEP_RANGE = (8, 1024)  # images per step on a GPU, whatever the memory says


def default_batch_size(device: torch.device, free_bytes: int | None = None,
                       bytes_per_image: float | None = None) -> int:
    """Images per optimisation step when the user does not say. On a CPU 1: one image's 2·B
    blends already fill the cores and larger steps fall out of cache (N = 4 was 10–20 % slower
    per image than N = 1 on the 2-core box, bench/RESULTS.md). On a GPU as many as fill
    ``GPU_MEMORY_SHARE`` of its free memory at ``bytes_per_image`` a step
    (``step_bytes``), within ``GPU_STEP_RANGE``; 8 when either is unknown."""
    if device.type != "cuda":
        return 1
    low, high = GPU_STEP_RANGE
    if not free_bytes or not bytes_per_image:
        return low
    return int(min(max(GPU_MEMORY_SHARE * free_bytes // bytes_per_image, low), high))


CPU_FORWARD_BATCH = 4  # images per gradient-free forward pass on a CPU
GPU_FORWARD_BATCH = 64


def forward_batch(device: torch.device) -> int:
    """Images per forward pass of a gradient-free sweep (deletion and insertion curves). On a
    CPU 4: larger batches fall out of cache (Lite0 at 224², 1 or 2 threads, both curves of an
    image at 50 steps: 0.9–1.8 s at 4 a pass, 2.4–3.4 s at 64; bench/RESULTS.md); on a GPU 64,
    where a pass is bound by its launch, not by memory."""
    return GPU_FORWARD_BATCH if device.type == "cuda" else CPU_FORWARD_BATCH


@torch.no_grad()
def activation_bytes(module: nn.Module, input_size: tuple[int, int]) -> int:
    """Bytes of every leaf module's output for one image in float32 on the CPU: what a forward
    pass keeps for the backward, roughly (one probe forward, hooks on the leaves)."""
    total = 0

    def count(_module: nn.Module, _inputs: object, output: object) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel() * 4

    leaves = [m for m in module.modules() if not list(m.children())]
    handles = [m.register_forward_hook(count) for m in leaves]
    try:
        module(torch.zeros(1, 3, *input_size))
    finally:
        for handle in handles:
            handle.remove()
    return total


def step_bytes(activations: int, blends_per_image: float, autocast: bool) -> float:
    """GPU memory one image of a step needs: its blends' activations (half of them in bf16),
    twice over for the backward's temporaries."""
    return activations * blends_per_image * (0.5 if autocast else 1.0) * 2.0


def free_gpu_bytes(device: torch.device) -> int | None:
    """Free memory of a CUDA device (None elsewhere)."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return int(free)


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
