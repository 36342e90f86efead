"""The GPU path planned on paper (issue 14): FLOPs and bytes of one explained image, the fraction
of this CPU's peak the engine's step reaches, and images/s projected for an H100 and an H200.

    .venv/bin/python bench/roofline.py [--samples 2] [--iterations 30] [--force]

FLOPs come from torch's flop counter on the forward pass over the 2·B blends of one step, doubled
for the input-gradient backward (weights are frozen: no weight gradients; the counter's own
backward formulas count depthwise convolutions as dense ones, 20× too many); bytes from a dispatch mode that adds up every aten op's inputs
and outputs (no fusion: an upper bound of memory traffic). The projection takes the larger of
compute time and memory time for each device, at the efficiencies stated below, and prints every
assumption beside the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.quiet import load_average, machine, require_quiet

# Published dense bf16 tensor-core peaks and HBM bandwidths (NVIDIA data sheets, SXM parts).
DEVICES = {"H100 SXM": {"bf16_flops": 989e12, "bytes_per_s": 3.35e12},
           "H200 SXM": {"bf16_flops": 989e12, "bytes_per_s": 4.8e12}}
# Assumed fractions of peak for EfficientNet-Lite0 at 224² in bf16: its depthwise convolutions and
# small channel counts keep tensor cores far from peak; memory traffic streams well.
COMPUTE_EFFICIENCY = 0.15
MEMORY_EFFICIENCY = 0.6
CUB_TEST_IMAGES = 5794


class ByteCounter(TorchDispatchMode):
    """Sum of the sizes of every aten op's tensor inputs and outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten((args, kwargs, out))[0]:
            if isinstance(value, torch.Tensor):
                self.bytes += value.numel() * value.element_size()
        return out


def one_step(module: torch.nn.Module, blends: torch.Tensor) -> None:
    x = blends.clone().requires_grad_(True)
    module(x).logsumexp(dim=1).sum().backward()


def cpu_peak_flops() -> dict:
    """fp32 peak of this CPU: cores × clock × FMA lanes (AVX-512: 2 units × 16 fp32 × 2)."""
    import os

    flags = Path("/proc/cpuinfo").read_text()
    mhz = max(float(line.split(":")[1]) for line in flags.splitlines() if line.startswith("cpu MHz"))
    lanes = 16 if "avx512f" in flags else 8
    per_cycle = 2 * lanes * 2
    cores = os.cpu_count() or 1
    return {"fp32_peak_flops": cores * mhz * 1e6 * per_cycle,
            "assumed": f"{cores} cores × {mhz:.0f} MHz × {per_cycle} fp32 FLOPs/cycle "
                       "(2 FMA units, AVX-512)" if lanes == 16 else "AVX2"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    from fidoflow.pipeline.models.loading import load_model

    loaded = load_model()
    module = loaded.on(torch.device("cpu"))
    blends = torch.rand(2 * args.samples, 3, *loaded.input_size).contiguous(
        memory_format=torch.channels_last)
    with FlopCounterMode(display=False) as flops, torch.no_grad():
        module(blends)
    with ByteCounter() as counted:
        one_step(module, blends)
    step_flops, step_bytes = 2 * flops.get_total_flops(), counted.bytes
    load = load_average() if args.force else require_quiet()
    one_step(module, blends)
    times = []
    for _ in range(10):
        began = time.perf_counter()
        one_step(module, blends)
        times.append(time.perf_counter() - began)
    step_seconds = sorted(times)[len(times) // 2]
    peak = cpu_peak_flops()
    image_flops = step_flops * args.iterations
    image_bytes_fp32 = step_bytes * args.iterations
    image_bytes_bf16 = image_bytes_fp32 / 2
    projections = {}
    for name, device in DEVICES.items():
        compute = image_flops / (device["bf16_flops"] * COMPUTE_EFFICIENCY)
        memory = image_bytes_bf16 / (device["bytes_per_s"] * MEMORY_EFFICIENCY)
        seconds = max(compute, memory)
        projections[name] = {"compute_s_per_image": compute, "memory_s_per_image": memory,
                             "bound": "compute" if compute > memory else "memory",
                             "images_per_s": 1 / seconds,
                             "cub_test_seconds": CUB_TEST_IMAGES * seconds}
    print(json.dumps({
        "machine": machine(), "load": round(load, 2), "model": loaded.name,
        "input": list(loaded.input_size), "samples": args.samples, "iterations": args.iterations,
        "step": {"flops": step_flops, "bytes_fp32_unfused": step_bytes,
                 "arithmetic_intensity": step_flops / step_bytes, "cpu_seconds": step_seconds},
        "image": {"flops": image_flops, "bytes_bf16_unfused": image_bytes_bf16},
        "cpu": {**peak, "achieved_flops": step_flops / step_seconds,
                "fraction_of_peak": step_flops / step_seconds / peak["fp32_peak_flops"]},
        "assumptions": {"devices": DEVICES, "compute_efficiency": COMPUTE_EFFICIENCY,
                        "memory_efficiency": MEMORY_EFFICIENCY,
                        "bytes": "bf16 halves the fp32 traffic; unfused op-by-op sums are an "
                                 "upper bound (cuDNN fuses BN/activation into convolutions)",
                        "overheads": "mask sampling, upsampling, blending and Adam are counted "
                                     "in neither FLOPs nor bytes of the classifier; they are "
                                     "elementwise on (2·B, 3, 224, 224) and small beside it"},
        "projection": projections,
    }, indent=1))


if __name__ == "__main__":
    main()
