"""Mask quality on the synthetic fine-grained benchmark: shared by the sweep and bench/engine.py."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from fidoflow.pipeline.archive.synthetic import SyntheticSet, make_dataset
from fidoflow.pipeline.methods.base import Method
from fidoflow.pipeline.metrics.box import share_inside
from fidoflow.pipeline.metrics.deletion_insertion import deletion_insertion
from fidoflow.pipeline.models.synthetic_cnn import load_synthetic_classifier


@dataclass
class Benchmark:
    model: torch.nn.Module
    data: SyntheticSet


def load_benchmark(n: int, seed: int = 2026) -> Benchmark:
    """``n`` held-out scenes (seed differs from training) and the committed classifier."""
    model, _ = load_synthetic_classifier()
    return Benchmark(model, make_dataset(n, seed))


def score(bench: Benchmark, attributor: Method, steps: int = 32) -> dict[str, float]:
    """Mean in-region share, deletion and insertion AUC, seconds per image, for the true class."""
    data = bench.data
    began = time.perf_counter()
    with attributor:
        out = attributor.attribute(data.images, data.labels, list(range(len(data.labels))))
    seconds = (time.perf_counter() - began) / len(data.labels)
    saliency = out.maps["joint"].float()
    curves = deletion_insertion(bench.model, data.images, saliency, data.labels, steps=steps)
    return {
        "share_in_region": share_inside(saliency, data.part_masks.float()).nanmean().item(),
        "deletion": curves.deletion_auc.mean().item(),
        "insertion": curves.insertion_auc.mean().item(),
        "sec_per_image": seconds,
        **({"mean_iterations": out.scalars["iterations"].float().mean().item()}
           if "iterations" in out.scalars else {}),
    }
