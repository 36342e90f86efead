"""The map's total variation: how patchy it is (descriptive, no better direction)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from fidoflow.pipeline.imaging.filters import total_variation
from fidoflow.pipeline.metrics.base import Column, Metric, MetricBatch, register

if TYPE_CHECKING:
    from fidoflow.pipeline.analysis.evaluate import EvaluateConfig


@register
class TotalVariation(Metric):
    """Mean absolute difference of neighbouring cells of the map at its own resolution."""

    columns = (Column("total_variation", pa.float32(), None, "TV",
                      "mean absolute difference of neighbouring mask cells (0: flat; high: "
                      "salt and pepper)"),)
    position = 50

    def measure(self, batch: MetricBatch, config: EvaluateConfig) -> dict[str, np.ndarray]:
        return {"total_variation": total_variation(batch.saliency).cpu().numpy()
                .astype(np.float32)}
