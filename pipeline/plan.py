"""How a run is cut into work: shards (the unit of resume: a shard's masks and parts are
written together, a rerun redoes only the shards without them) and tasks (the unit of
scheduling: whole shards, one Zarr storage object per map, tens of seconds of work).

A task's size comes from the work an image costs: the classifier passes of the run's methods
and analysis (each method declares its ``passes``) times the seconds of one forward pass on the
run's device, measured on this machine's CPU and, for a GPU, divided by ``GPU_SPEEDUP`` (a
planning figure; bench/gpu_check.sh measures the real one). Tasks are sized to
``TARGET_SECONDS``, never more than ``MAX_TASKS`` of them for a run, and small enough that every
worker gets two when the run has that many shards.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

TARGET_SECONDS = 30.0  # work per task
MAX_TASKS = 2000  # Prefect task runs of one run's explain stage, at most
GPU_SPEEDUP = 30.0  # a GPU's forward pass against this CPU's, for planning only
PER_IMAGE = 0.005  # seconds an image costs beside the classifier: decode, hash, writes
LARGEST_SHARD = {"cpu": 16, "cuda": 256}  # images per shard when the user gives none


@dataclass(frozen=True)
class Cost:
    """Classifier passes per image: the explanation (every method) and the analysis."""

    explain: float
    analysis: float = 0.0

    @property
    def passes(self) -> float:
        return self.explain + self.analysis


def analysis_passes(methods: int, deletion_steps: int) -> float:
    """Re-classification (the full image, then a crop and a blend per method) and deletion
    and insertion curves (2 × (steps + 1) forwards per method)."""
    return 1 + 2 * methods + methods * 2 * (deletion_steps + 1)


@torch.no_grad()
def forward_seconds(module: nn.Module, input_size: tuple[int, int], batch: int = 8,
                    repeats: int = 2) -> float:
    """Seconds of one image's forward pass through ``module`` on the CPU (the best of a few
    batches, after a warm-up)."""
    x = torch.rand(batch, 3, *input_size)
    module(x)
    best = math.inf
    for _ in range(repeats):
        began = time.perf_counter()
        module(x)
        best = min(best, time.perf_counter() - began)
    return best / batch


def auto_shard_size(images: int, workers: int, largest: int = LARGEST_SHARD["cpu"]) -> int:
    """Images per shard when the user does not say: the fewest rounds of at most ``largest``
    images per worker, split evenly, so every worker has a shard in every round (8 images on
    2 workers: 2 shards of 4; 48: 4 of 12; 256: 16 of 16)."""
    workers = max(workers, 1)
    rounds = -(-images // (workers * largest))
    return max(1, -(-images // (workers * rounds)))


def task_size(images: int, workers: int, shard_size: int, seconds_per_image: float,
              target: float = TARGET_SECONDS, max_tasks: int = MAX_TASKS) -> int:
    """Images per task: a whole number of shards, about ``target`` seconds of work, at least
    ``images / max_tasks``, at most half a worker's share when there are shards enough, and as
    many tasks as a whole number of rounds of the workers where the shards allow (so that no
    worker idles through the last round)."""
    workers = max(workers, 1)
    per = target / max(seconds_per_image, 1e-9)
    per = max(per, images / max_tasks)
    per = min(per, images / (2 * workers))
    shards = -(-images // shard_size)
    count = max(1, math.ceil(images / max(per, 1.0)))
    count = min(-(-count // workers) * workers, shards)  # whole rounds
    base = -(-shards // count)  # shards per task; whole shards may break the rounds again:
    for step in sorted(range(-3, 4), key=abs):  # the nearest size that keeps them whole
        size = base + step
        if size >= 1 and -(-shards // size) % workers == 0 and shards / size <= max_tasks:
            return size * shard_size
    return base * shard_size


def tasks(n_shards: int, shards_per_task: int) -> list[range]:
    """The shards of each task, in order."""
    return [range(first, min(first + shards_per_task, n_shards))
            for first in range(0, n_shards, shards_per_task)]


def needing(groups: Iterable[range], todo: set[int]) -> list[range]:
    """The tasks that hold a shard still to do."""
    return [g for g in groups if any(s in todo for s in g)]
