"""What the GPU path decides, checked on the CPU: images per step from the free GPU memory,
the activation bytes a step needs, bf16 only on CUDA (tests/test_cluster.py: device choice and
pinning)."""

from __future__ import annotations

import torch

from fidoflow.pipeline.models.device import (
    GPU_MEMORY_SHARE,
    GPU_STEP_RANGE,
    activation_bytes,
    default_batch_size,
    step_bytes,
)
from fidoflow.pipeline.models.loading import load_model


def test_images_per_step_follow_the_free_memory() -> None:
    cuda = torch.device("cuda")
    low, high = GPU_STEP_RANGE
    assert default_batch_size(cuda) == low  # nothing known: a safe small step
    assert default_batch_size(cuda, 10 * 2**30, 2**30) == low  # little memory: never below
    assert default_batch_size(cuda, 2**40, 2**20) == high  # a huge card: never above
    per_image = 256 * 2**20
    assert default_batch_size(cuda, 100 * 2**30, per_image) == int(
        GPU_MEMORY_SHARE * 100 * 2**30 // per_image)
    assert default_batch_size(torch.device("cpu"), 2**40, 1) == 1


def test_a_lite0_step_on_an_h200_holds_hundreds_of_images() -> None:
    loaded = load_model()
    activations = activation_bytes(loaded.module, loaded.input_size)
    assert 5 * 2**20 < activations < 200 * 2**20  # tens of MB a 224² image, in float32
    per_image = step_bytes(activations, blends_per_image=8, autocast=True)
    assert per_image == activations * 8 * 0.5 * 2
    steps = default_batch_size(torch.device("cuda"), 139 * 2**30, per_image)
    assert 100 <= steps <= GPU_STEP_RANGE[1]  # not 8: the device is filled
