"""The GPU path on a GPU (bench/gpu_check.sh runs these there; skipped without CUDA): FIDO's
masks on CUDA with bf16 autocast agree with the CPU's, a step fills the device's memory, a
CUDA cluster gives each worker its own GPU. Their CPU halves (the decisions) are in
tests/test_cluster.py and tests/test_device_decisions.py."""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")]


def test_fido_on_cuda_with_bf16_finds_the_cpus_mask(square_model) -> None:
    from fidoflow.pipeline.methods.fido import Fido, FidoConfig
    from tests.conftest import square_image

    images = square_image(4)
    config = FidoConfig(iterations=20, mask_size=8)
    with Fido(square_model, config) as fido:
        cpu = fido.attribute(images, seeds=[0, 1, 2, 3]).maps["joint"]
    model = square_model.cuda()
    with Fido(model, config) as fido:
        gpu = fido.attribute(images.cuda(), seeds=[0, 1, 2, 3]).maps["joint"].cpu()
    agreement = torch.corrcoef(torch.stack([cpu.flatten(), gpu.flatten()]))[0, 1]
    assert agreement > 0.9


def test_a_step_fills_the_free_memory_of_the_device() -> None:
    from fidoflow.pipeline.models.device import (
        GPU_STEP_RANGE,
        activation_bytes,
        default_batch_size,
        free_gpu_bytes,
        step_bytes,
    )
    from fidoflow.pipeline.models.loading import load_model

    loaded = load_model()
    device = torch.device("cuda")
    per_image = step_bytes(activation_bytes(loaded.module, loaded.input_size), 8, True)
    steps = default_batch_size(device, free_gpu_bytes(device), per_image)
    assert GPU_STEP_RANGE[0] < steps <= GPU_STEP_RANGE[1]
    module = loaded.on(device)
    blends = torch.rand(steps * 8, 3, *loaded.input_size, device=device, requires_grad=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        module(blends).logsumexp(1).sum().backward()  # the step's size fits
    assert torch.cuda.max_memory_allocated(device) < torch.cuda.get_device_properties(0).total_memory


def test_a_cuda_cluster_pins_one_worker_per_gpu() -> None:
    pytest.importorskip("dask_cuda")
    from distributed import Client

    from fidoflow.flows.cluster import ClusterPlan, cluster_spec

    gpus = torch.cuda.device_count()
    _, kwargs = cluster_spec(ClusterPlan("cuda", gpus, gpus=tuple(range(gpus))))
    import dask_cuda

    with dask_cuda.LocalCUDACluster(**{k: v for k, v in kwargs.items()}) as cluster, \
            Client(cluster) as client:
        seen = client.run(lambda: __import__("os").environ["CUDA_VISIBLE_DEVICES"])
    assert len(seen) == gpus
    assert sorted(v.split(",")[0] for v in seen.values()) == [str(i) for i in range(gpus)]
