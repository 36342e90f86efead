"""The pointing game (TorchRay): the map's maximum within a tolerance of the ground truth.

Maps, boxes and masks follow the conventions of box.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import torch

from fidoflow.pipeline.metrics.base import Column, Metric, MetricBatch, register
from fidoflow.pipeline.metrics.box import _regions

if TYPE_CHECKING:
    from fidoflow.pipeline.analysis.evaluate import EvaluateConfig


def pointing_game(saliency: torch.Tensor, regions: torch.Tensor, tolerance_px: float = 15,
                  image_size: tuple[int, int] | None = None) -> torch.Tensor:
    """Hit (N,) bool: the map's maximum at image resolution (first one in row-major order) lies
    within ``tolerance_px`` (inclusive, Euclidean, pixel centres) of a ground-truth pixel.

    ``regions`` are (N, H, W) masks or (N, 4) boxes. TorchRay uses a strict ``<``; "within
    15 px" is read here as ``<=``.
    """
    masks, sal = _regions(saliency, regions, image_size)
    h, w = masks.shape[-2:]
    peak = sal.flatten(1).argmax(dim=1)
    py, px = (peak // w).float(), (peak % w).float()
    ys = torch.arange(h, device=masks.device, dtype=torch.float32)
    xs = torch.arange(w, device=masks.device, dtype=torch.float32)
    d2 = (ys[None, :, None] - py[:, None, None]) ** 2 + (xs[None, None, :] - px[:, None, None]) ** 2
    return (masks & (d2 <= tolerance_px**2)).flatten(1).any(dim=1)



@register
class PointingGame(Metric):
    """A hit when the map's peak lies within ``pointing_tolerance`` px (at 224²) of the box."""

    columns = (Column("pointing_hit", pa.bool_(), "higher", "pointing ↑",
                      "the map's maximum lies within 15 px (at 224) of the box"),)
    needs = frozenset({"boxes"})
    position = 20

    def measure(self, batch: MetricBatch, config: EvaluateConfig) -> dict[str, np.ndarray]:
        hit = pointing_game(batch.saliency, batch.truth(),
                            batch.pixels(config.pointing_tolerance, config), image_size=batch.size)
        return {"pointing_hit": hit.float().numpy()}
