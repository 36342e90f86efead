"""Metrics of saliency maps, batched over images: tensors in, per-image values out.

Saliency maps (N, h, w) of any resolution are upsampled bilinearly to the image size before
they are compared with pixels. Boxes are (N, 4) = x0, y0, x1, y1 in pixel edges of the image:
pixel (row i, column j) lies inside when its centre (j + 0.5, i + 0.5) does, so an integer box
covers columns x0 .. x1 - 1 and rows y0 .. y1 - 1. Where a box is given and the map is not at
image resolution, pass ``image_size`` (default: the map's own size).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from fidoflow.pipeline.imaging.filters import REFERENCE_SIZE, gaussian_blur, resize_maps
from fidoflow.pipeline.perturbation import Perturbation
from torch import nn


@dataclass
class DeletionInsertion:
    """Per-image AUCs (N,), curves (N, steps + 1) and the fraction of pixels changed per step."""

    deletion_auc: torch.Tensor
    insertion_auc: torch.Tensor
    deletion_curve: torch.Tensor
    insertion_curve: torch.Tensor
    fractions: torch.Tensor


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


def igos_blur(images: torch.Tensor) -> torch.Tensor:
    """I-GOS's deletion baseline, a Gaussian blur with kernel 51 and sigma 50 at 224^2, scaled:
    the kernel is cut at I-GOS's radius 25, not the default 3.7 sigma (185 px), which would blur
    far more."""
    scale = min(images.shape[-2:]) / REFERENCE_SIZE
    return gaussian_blur(images, 50.0 * scale, radius=round(25 * scale))


@torch.no_grad()
def deletion_insertion(model: nn.Module, images: torch.Tensor, saliency: torch.Tensor,
                       targets: torch.Tensor, steps: int = 100, baseline: str = "blur",
                       batch_size: int = 64) -> DeletionInsertion:
    """RISE deletion and insertion: the target's softmax probability as the most salient pixels
    are replaced by the baseline ("blur": I-GOS blur, or "zeros") / restored from it.

    Step k changes the first floor(k * H * W / steps) pixels of the ranking (saliency descending,
    ties by row-major index), so the curves run from nothing changed (k = 0) to everything
    changed (k = steps) inclusive; AUC is the trapezoid over the fraction changed, in [0, 1].
    The model (eval mode) sees at most ``batch_size`` images per forward pass: all images
    times a chunk of steps, deletion and insertion together.
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
    per = max(1, batch_size // 2)
    for start in range(0, n * (steps + 1), per):
        item = torch.arange(start, min(start + per, n * (steps + 1)), device=device)
        k, i = item // n, item % n
        changed = (rank[i] < counts[k, None]).view(-1, h, w)
        # deletion keeps the unchanged pixels, insertion the changed ones: one forward pass
        probs[:, i, k] = scene.select(i).probability(torch.stack([~changed, changed]))
    fractions = counts.float() / (h * w)
    auc = torch.trapezoid(probs, fractions, dim=-1)
    return DeletionInsertion(auc[0], auc[1], probs[0], probs[1], fractions)


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
