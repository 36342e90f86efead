"""Part locations (CUB-200-2011's 15 parts, or a manifest's ``parts``): how much of a map's mass
lies near each visible part, which part its peak is nearest to, and a part pointing game
(docs/method.md, "What each metric means").

A part's neighbourhood is a disc around its centre whose radius is ``PART_RADIUS`` times the
geometric mean of the object box's sides (the square root of its area), so that the disc covers
the same share of a large and of a small bird; without a box, that fraction of the model
input's shorter side. Discs of neighbouring parts may overlap: each part's share is of the whole
map's mass. Everything is measured at the model input's resolution, the map upsampled
bilinearly, parts scaled there as boxes are.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import torch

from fidoflow.pipeline.imaging.filters import resize_maps
from fidoflow.pipeline.metrics.base import Column, Measured, Metric, MetricBatch, register

if TYPE_CHECKING:
    from fidoflow.pipeline.analysis.evaluate import EvaluateConfig

PART_RADIUS = 0.1  # of the object box's geometric mean side


def part_radius(box: np.ndarray, size: tuple[int, int]) -> float:
    """The disc radius of an image's parts, in input pixels."""
    if np.isnan(box).any():
        return PART_RADIUS * min(size)
    return PART_RADIUS * math.sqrt(max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0))


def part_shares(saliency: torch.Tensor, parts: list[dict], radius: float
                ) -> tuple[list[float], int, bool]:
    """One map (H, W) at input resolution: each part's share of its mass within ``radius``,
    the index of the part nearest to its maximum (first in row-major order), and whether the
    maximum lies inside some part's disc."""
    h, w = saliency.shape
    ys = torch.arange(h, dtype=torch.float32)[:, None]
    xs = torch.arange(w, dtype=torch.float32)[None, :]
    total = float(saliency.sum())
    peak = int(saliency.flatten().argmax())
    py, px = peak // w, peak % w
    shares, distances = [], []
    for part in parts:
        inside = (ys - part["y"]) ** 2 + (xs - part["x"]) ** 2 <= radius ** 2
        shares.append(float((saliency * inside).sum()) / total if total > 0 else math.nan)
        distances.append(math.hypot(px - part["x"], py - part["y"]))
    nearest = int(np.argmin(distances))
    return shares, nearest, distances[nearest] <= radius


@register
class PartShare(Metric):
    """Per visible part its share of the map's mass (the ``parts`` table), the part nearest to
    the map's peak and whether the peak falls on a part."""

    columns = (Column("part_pointing_hit", pa.bool_(), "higher", "part pointing ↑",
                      "the map's maximum lies within the disc of a visible part"),
               Column("peak_part", pa.string(), None, "peak part",
                      "the visible part nearest to the map's maximum", summarised=False))
    needs = frozenset({"parts"})
    position = 60
    table = "parts"

    def measure(self, batch: MetricBatch, config: EvaluateConfig) -> Measured:
        sal = resize_maps(batch.saliency.float().cpu(), batch.size)
        hits, peaks, rows = [], [], []
        for k, parts in enumerate(batch.parts):
            radius = part_radius(batch.boxes[k], batch.size)
            shares, nearest, hit = part_shares(sal[k], parts, radius)
            hits.append(float(hit))
            peaks.append(parts[nearest]["name"])
            rows += [{"image": k, "part": part["name"], "x": float(part["x"]),
                      "y": float(part["y"]), "radius": radius, "share": share,
                      "nearest": j == nearest}
                     for j, (part, share) in enumerate(zip(parts, shares, strict=True))]
        return Measured({"part_pointing_hit": np.array(hits, np.float32),
                         "peak_part": np.array(peaks, dtype=object)}, rows)
