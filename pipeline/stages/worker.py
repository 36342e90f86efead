"""What each worker process keeps: the run's model, loaded once, the images it optimises per
step, and its share of the machine's cores."""

from __future__ import annotations

import functools
import os

from fidoflow.pipeline.config import RunConfig
from fidoflow.pipeline.models.device import (
    activation_bytes,
    default_batch_size,
    free_gpu_bytes,
    resolve_device,
    step_bytes,
)
from fidoflow.pipeline.models.loading import LoadedModel, load_model


@functools.cache
def worker_model(spec: str, card: str | None = None, trust_code: bool = False) -> LoadedModel:
    """The model, loaded once per process (each Dask worker keeps its own)."""
    return load_model(spec, card, trust_code)


def model_of(config: RunConfig) -> LoadedModel:
    """The run's model (spec, card and trust flag from the config), once per process."""
    return worker_model(config.model, config.model_card, config.trust_model_code)


def images_per_step(config: RunConfig) -> int:
    """Images per optimisation step: the run's ``batch_size``, else what the worker's device
    holds (pipeline/models/device.py: 1 on a CPU; on a GPU as many as fill its free memory at
    the run's blends per image)."""
    if config.batch_size:
        return config.batch_size
    return _step_for(config.model, config.model_card, config.trust_model_code, config.device,
                     max(2 * getattr(s.config, "samples", 0) or 1
                         for s in config.methods.values()))


@functools.cache
def _step_for(model: str, card: str | None, trust: bool, device: str, blends: int) -> int:
    where = resolve_device(device)
    if where.type != "cuda":
        return default_batch_size(where)
    loaded = worker_model(model, card, trust)
    per_image = step_bytes(activation_bytes(loaded.module, loaded.input_size), blends, True)
    return default_batch_size(where, free_gpu_bytes(where), per_image)


def set_worker_threads(workers: int) -> None:
    """Share the machine's cores between worker processes instead of oversubscribing them."""
    import torch
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(workers, 1)))


def visible_gpu() -> bool:
    import torch
    return torch.cuda.is_available()
