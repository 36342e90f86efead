"""Box metrics: the share of the map's mass inside the ground-truth box, and SCD's box IoU and
FDR of the thresholded map's box (docs/method.md, "What each metric means").

Saliency maps (N, h, w) of any resolution are upsampled bilinearly to the image size before
they are compared with pixels. Boxes are (N, 4) = x0, y0, x1, y1 in pixel edges of the image:
pixel (row i, column j) lies inside when its centre (j + 0.5, i + 0.5) does, so an integer box
covers columns x0 .. x1 - 1 and rows y0 .. y1 - 1. Where a box is given and the map is not at
image resolution, pass ``image_size`` (default: the map's own size).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import torch

from fidoflow.pipeline.imaging.filters import gaussian_blur, resize_maps
from fidoflow.pipeline.metrics.base import Column, Metric, MetricBatch, register

if TYPE_CHECKING:
    from fidoflow.pipeline.analysis.evaluate import EvaluateConfig


def boxes_to_masks(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, 4) boxes -> (N, H, W) bool masks of the pixels whose centres lie inside."""
    ys = torch.arange(size[0], device=boxes.device, dtype=torch.float32) + 0.5
    xs = torch.arange(size[1], device=boxes.device, dtype=torch.float32) + 0.5
    b = boxes.float()[:, :, None]
    inside_x = (xs >= b[:, 0]) & (xs < b[:, 2])
    inside_y = (ys >= b[:, 1]) & (ys < b[:, 3])
    return inside_y[:, :, None] & inside_x[:, None, :]



def _regions(saliency: torch.Tensor, regions: torch.Tensor,
             image_size: tuple[int, int] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Ground truth as (N, H, W) bool masks, and the saliency upsampled to that size."""
    if regions.dim() == 3:
        masks = regions.bool()
    else:
        masks = boxes_to_masks(regions, image_size or tuple(saliency.shape[-2:]))
    return masks, resize_maps(saliency.float(), tuple(masks.shape[-2:])).to(masks.device)



def share_inside(saliency: torch.Tensor, regions: torch.Tensor,
                 image_size: tuple[int, int] | None = None) -> torch.Tensor:
    """Fraction (N,) of each map's total mass inside the ground truth (masks or boxes); a
    uniform map scores the region's area fraction, an all-zero map NaN."""
    masks, sal = _regions(saliency, regions, image_size)
    return (sal * masks).flatten(1).sum(1) / sal.flatten(1).sum(1)



def _mask_box(mask: torch.Tensor) -> torch.Tensor:
    """(N, H, W) non-empty bool masks -> (N, 4) tight boxes in pixel edges."""
    cols, rows = mask.any(dim=1), mask.any(dim=2)

    def first_last(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        first = m.int().argmax(dim=1)
        return first, m.shape[1] - m.flip(1).int().argmax(dim=1)

    (x0, x1), (y0, y1) = first_last(cols), first_last(rows)
    return torch.stack([x0, y0, x1, y1], dim=1).float()


def _area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU (N,) of paired (N, 4) boxes."""
    iw = (torch.minimum(a[:, 2], b[:, 2]) - torch.maximum(a[:, 0], b[:, 0])).clamp(min=0)
    ih = (torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 1], b[:, 1])).clamp(min=0)
    inter = iw * ih
    return inter / (_area(a) + _area(b) - inter)


def box_iou_fdr(saliency: torch.Tensor, boxes: torch.Tensor, smooth_sigma: float = 3.0,
                threshold: float = 0.5, image_size: tuple[int, int] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """SCD's box metrics (N,), (N,): smooth the map (sigma in image pixels), keep the pixels at
    or above ``threshold`` times its maximum and box them; IoU with the ground-truth box, and
    FDR = salient pixels outside it / pixels outside it. The maximum always passes, so SCD's
    fall-back to the mean never triggers: an all-zero map marks the whole image."""
    gt = boxes_to_masks(boxes, image_size or tuple(saliency.shape[-2:]))
    sal = resize_maps(saliency.float(), tuple(gt.shape[-2:])).to(gt.device)
    sal = gaussian_blur(sal[:, None], smooth_sigma)[:, 0]
    salient = sal >= threshold * sal.flatten(1).amax(dim=1)[:, None, None]
    iou = box_iou(_mask_box(salient), boxes.float().to(gt.device))
    outside = ~gt
    fdr = (salient & outside).flatten(1).sum(1) / outside.flatten(1).sum(1)
    return iou, fdr


@register
class ShareInBox(Metric):
    """How much of the map's mass lies on the object (a uniform map scores the box's area)."""

    columns = (Column("share_in_box", pa.float32(), "higher", "share in box ↑",
                      "share of the map's mass inside the box"),)
    needs = frozenset({"boxes"})
    position = 30

    def measure(self, batch: MetricBatch, config: EvaluateConfig) -> dict[str, np.ndarray]:
        return {"share_in_box": share_inside(batch.saliency, batch.truth(),
                                             image_size=batch.size).numpy()}


@register
class BoxOverlap(Metric):
    """SCD's box metrics of the smoothed, thresholded map (``smooth_sigma``, ``threshold``)."""

    columns = (Column("box_iou", pa.float32(), "higher", "box IoU ↑",
                      "IoU of the box around the smoothed map's pixels ≥ 0.5 × its maximum "
                      "with the ground-truth box"),
               Column("fdr", pa.float32(), "lower", "FDR ↓",
                      "salient pixels outside the box / pixels outside the box"))
    needs = frozenset({"boxes"})
    position = 40

    def measure(self, batch: MetricBatch, config: EvaluateConfig) -> dict[str, np.ndarray]:
        iou, fdr = box_iou_fdr(batch.saliency, batch.truth(),
                               batch.pixels(config.smooth_sigma, config), config.threshold,
                               image_size=batch.size)
        return {"box_iou": iou.numpy(), "fdr": fdr.numpy()}
