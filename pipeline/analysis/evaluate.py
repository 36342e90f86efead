"""Evaluating masks (ALGORITHM.md, "Evaluation protocols") for a batch of images, with the
metrics of pipeline/metrics.py: deletion/insertion AUCs and curves for every image; pointing
game, share of saliency inside the box, box IoU and FDR where a ground-truth box exists; the
map's total variation.

Everything is measured at the model input's resolution, where the masks were made: boxes given
in pixels of the original picture are scaled there (``boxes_to_input``), and the pixel
parameters of the protocols (TorchRay's 15 px tolerance, SCD's smoothing sigma 3) are given at
``reference_size`` (224) and scaled with the input's shorter side.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from fidoflow.pipeline.analysis.metrics import (
    box_iou_fdr,
    deletion_insertion,
    pointing_game,
    share_inside,
)
from fidoflow.pipeline.imaging.filters import REFERENCE_SIZE, total_variation
from torch import nn


@dataclass(frozen=True)
class EvaluateConfig:
    """``steps``: deletion/insertion curve points minus one (50: 2 % of the pixels per step,
    AUC within ~1e-3 of 100 steps at half the cost); ``baseline``: what deleted pixels become
    ("blur": I-GOS's blur, or "zeros"); ``batch_size``: perturbed images per forward pass."""

    steps: int = 50
    baseline: str = "blur"
    pointing_tolerance: float = 15.0
    smooth_sigma: float = 3.0
    threshold: float = 0.5
    reference_size: int = REFERENCE_SIZE
    batch_size: int = 64

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def boxes_to_input(boxes: np.ndarray, views: np.ndarray, input_size: tuple[int, int]) -> np.ndarray:
    """(N, 4) boxes in original pixels -> model-input pixels, given each image's ``views`` (N, 4):
    the part of the original the model saw (the whole picture when it squashes). Boxes are
    clipped to the view; a box that is missing (NaN), empty or outside the view becomes NaN."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    views = np.asarray(views, dtype=np.float64).reshape(-1, 4)
    h, w = input_size
    sx = w / (views[:, 2] - views[:, 0])
    sy = h / (views[:, 3] - views[:, 1])
    out = np.stack([(boxes[:, 0] - views[:, 0]) * sx, (boxes[:, 1] - views[:, 1]) * sy,
                    (boxes[:, 2] - views[:, 0]) * sx, (boxes[:, 3] - views[:, 1]) * sy], axis=1)
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, w)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, h)
    empty = ~((out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1]))
    out[empty] = np.nan
    return out


@torch.no_grad()
def evaluate_masks(model: nn.Module, images: torch.Tensor, saliency: torch.Tensor,
                   targets: torch.Tensor, boxes: np.ndarray | None = None,
                   config: EvaluateConfig = EvaluateConfig()) -> dict[str, np.ndarray]:
    """Per-image metrics of maps (N, h, w) for model inputs (N, 3, H, W) and the classes they
    explain (N,); ``boxes`` (N, 4) in input pixels, NaN rows where an image has none.

    Returns arrays of length N: deletion_auc, insertion_auc, total_variation; pointing_hit
    (1.0/0.0), share_in_box, box_iou, fdr (NaN without a box); and (N, steps + 1) curves.
    """
    n = len(images)
    was_training = model.training
    model.eval()
    try:
        sal = torch.nan_to_num(saliency.float(), nan=0.0).to(images.device)
        di = deletion_insertion(model, images, sal, targets.to(images.device), config.steps,
                                config.baseline, config.batch_size)
    finally:
        model.train(was_training)
    out = {
        "deletion_auc": di.deletion_auc.cpu().numpy().astype(np.float32),
        "insertion_auc": di.insertion_auc.cpu().numpy().astype(np.float32),
        "deletion_curve": di.deletion_curve.cpu().numpy().astype(np.float32),
        "insertion_curve": di.insertion_curve.cpu().numpy().astype(np.float32),
        "total_variation": total_variation(sal).cpu().numpy().astype(np.float32),
    }
    for key in ("pointing_hit", "share_in_box", "box_iou", "fdr"):
        out[key] = np.full(n, np.nan, dtype=np.float32)
    if boxes is None:
        return out
    boxes = np.asarray(boxes, dtype=np.float64).reshape(n, 4)
    has = ~np.isnan(boxes).any(axis=1)
    if not has.any():
        return out
    size = tuple(images.shape[-2:])
    unit = min(size) / config.reference_size
    idx = torch.from_numpy(np.nonzero(has)[0])
    chosen = sal.cpu()[idx]
    gt = torch.from_numpy(boxes[has]).float()
    out["pointing_hit"][has] = pointing_game(chosen, gt, config.pointing_tolerance * unit,
                                             image_size=size).float().numpy()
    out["share_in_box"][has] = share_inside(chosen, gt, image_size=size).numpy()
    iou, fdr = box_iou_fdr(chosen, gt, config.smooth_sigma * unit, config.threshold,
                           image_size=size)
    out["box_iou"][has] = iou.numpy()
    out["fdr"][has] = fdr.numpy()
    return out
