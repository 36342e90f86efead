"""Deletion and insertion (RISE, BMVC 2018): the target's probability as the most salient
pixels are removed, or restored from the baseline; AUCs and curves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from fidoflow.pipeline.imaging.filters import REFERENCE_SIZE, gaussian_blur, resize_maps
from fidoflow.pipeline.metrics.base import Column, Metric, MetricBatch, register
from fidoflow.pipeline.models.device import forward_batch
from fidoflow.pipeline.perturbation import Perturbation

if TYPE_CHECKING:
    from fidoflow.pipeline.analysis.evaluate import EvaluateConfig


@dataclass
class DeletionInsertion:
    """Per-image AUCs (N,), curves (N, steps + 1) and the fraction of pixels changed per step."""

    deletion_auc: torch.Tensor
    insertion_auc: torch.Tensor
    deletion_curve: torch.Tensor
    insertion_curve: torch.Tensor
    fractions: torch.Tensor



def igos_blur(images: torch.Tensor) -> torch.Tensor:
    """I-GOS's deletion baseline, a Gaussian blur with kernel 51 and sigma 50 at 224^2, scaled:
    the kernel is cut at I-GOS's radius 25, not the default 3.7 sigma (185 px), which would blur
    far more."""
    scale = min(images.shape[-2:]) / REFERENCE_SIZE
    return gaussian_blur(images, 50.0 * scale, radius=round(25 * scale))



@torch.no_grad()
def deletion_insertion(model: nn.Module, images: torch.Tensor, saliency: torch.Tensor,
                       targets: torch.Tensor, steps: int = 100, baseline: str = "blur",
                       batch_size: int | None = None) -> DeletionInsertion:
    """RISE deletion and insertion: the target's softmax probability as the most salient pixels
    are replaced by the baseline ("blur": I-GOS blur, or "zeros") / restored from it.

    Step k changes the first floor(k * H * W / steps) pixels of the ranking (saliency descending,
    ties by row-major index), so the curves run from nothing changed (k = 0) to everything
    changed (k = steps) inclusive; AUC is the trapezoid over the fraction changed, in [0, 1].
    The model (eval mode) sees at most ``batch_size`` images per forward pass (None: what suits
    the device, ``forward_batch``): all images times a chunk of steps, deletion and insertion
    together.
    """
    if baseline not in ("blur", "zeros"):
        raise ValueError(f"unknown baseline {baseline!r}; expected 'blur' or 'zeros'")
    n, _, h, w = images.shape
    device = images.device
    sal = resize_maps(saliency.float(), (h, w)).to(device).flatten(1)
    order = torch.sort(sal, dim=1, descending=True, stable=True).indices
    positions = torch.arange(h * w, device=device).expand(n, -1)
    rank = torch.empty_like(order).scatter_(1, order, positions)  # rank[i, pixel] = position
    counts = torch.arange(steps + 1, device=device) * (h * w) // steps
    base = igos_blur(images) if baseline == "blur" else torch.zeros_like(images)
    scene = Perturbation(model, images, base, targets.to(device))

    probs = torch.empty(2, n, steps + 1, device=device)
    per = max(1, (batch_size or forward_batch(device)) // 2)
    for start in range(0, n * (steps + 1), per):
        item = torch.arange(start, min(start + per, n * (steps + 1)), device=device)
        k, i = item // n, item % n
        changed = (rank[i] < counts[k, None]).view(-1, h, w)
        # deletion keeps the unchanged pixels, insertion the changed ones: one forward pass
        probs[:, i, k] = scene.select(i).probability(torch.stack([~changed, changed]))
    fractions = counts.float() / (h * w)
    auc = torch.trapezoid(probs, fractions, dim=-1)
    return DeletionInsertion(auc[0], auc[1], probs[0], probs[1], fractions)



@register
class DeletionInsertionAuc(Metric):
    """The curves at ``steps`` points (``baseline`` blur or zeros), their trapezoid AUCs."""

    columns = (
        Column("deletion_auc", pa.float32(), "lower", "deletion AUC ↓",
               "RISE deletion: area under the target's probability as the most salient pixels "
               "are replaced by the baseline, the I-GOS blur by default"),
        Column("insertion_auc", pa.float32(), "higher", "insertion AUC ↑",
               "RISE insertion: the same while restoring them into the baseline image"),
        Column("deletion_curve", pa.list_(pa.float32()), None, "deletion curve",
               "the deletion curve, `steps + 1` points; point k has k/steps of the pixels "
               "changed", summarised=False),
        Column("insertion_curve", pa.list_(pa.float32()), None, "insertion curve",
               "the insertion curve", summarised=False),
    )
    position = 10

    def measure(self, batch: MetricBatch, config: EvaluateConfig) -> dict[str, np.ndarray]:
        di = deletion_insertion(batch.model, batch.images, batch.saliency,
                                batch.targets.to(batch.images.device), config.steps,
                                config.baseline, config.batch_size)
        return {"deletion_auc": di.deletion_auc.cpu().numpy().astype(np.float32),
                "insertion_auc": di.insertion_auc.cpu().numpy().astype(np.float32),
                "deletion_curve": di.deletion_curve.cpu().numpy().astype(np.float32),
                "insertion_curve": di.insertion_curve.cpu().numpy().astype(np.float32)}
