"""Mask-guided re-classification: classify views of an image built from its saliency map.

The paper's "improve accuracy without fine-tuning" (docs/method.md, "Mask-guided
re-classification"), with the same model and no training:

- ``crop``: the saliency map resized to the picture, smoothed (sigma 3), thresholded at 0.5
  (falling back to the map's mean when nothing reaches it); the bounding box of the salient
  pixels, padded by 10 px, at least 64 px, made square and clipped to the picture, is cut from
  the picture at its *original* resolution and resized to the model input;
- ``blend``: the model-input image with everything outside the crop's box (edges feathered)
  replaced by its Gaussian blur (sigma 10): the crop's focus without its zoom. The public code
  alpha-blends with the map itself; a concentrated map then blurs the object too (0.5 on the
  object blurs it by half), and on the demo photos that changed every answer, mostly to nonsense
  (bench/RESULTS.md, issue 11);
- ``crop+global``: the mean of the softmaxes of the full image and of the crop.

Pixel parameters are those of the public code, which works on 224 px images: they are given
at ``reference_size`` and scaled with the picture they apply to (the crop's with the original
picture's shorter side, the blend's with the model input's), so that they cover the same part
of the scene whatever the resolution.

Conventions: images are (3, H, W) / (N, 3, H, W) floats in [0, 1]; boxes are (x0, y0, x1, y1)
in pixel edges (pixel column j covers [j, j + 1)); a saliency map covers the picture's ``view``
box (the whole picture when the model squashes it, the centre crop when it crops).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fidoflow.pipeline.analysis.records import (
    BASELINE_METHOD,
    BASELINE_VARIANT,
    CropBox,
    reclassify_record,
)
from fidoflow.pipeline.imaging.filters import REFERENCE_SIZE, gaussian_blur
from fidoflow.pipeline.imaging.views import Picture, to_original
from fidoflow.pipeline.models.inference import class_probabilities
from fidoflow.pipeline.perturbation import blend

VARIANTS = ("crop", "blend", "crop+global")



@dataclass(frozen=True)
class ReclassifyConfig:
    """Parameters of the re-classification views (defaults: the public SCD code's).

    ``smooth_sigma``, ``pad`` and ``min_size`` are pixels of a picture whose shorter side is
    ``reference_size``; ``blend_sigma`` likewise for the model input. ``threshold`` applies to
    the smoothed map itself (the joint map lies in [0, 1]). ``box_grid`` caps the long side of
    the grid on which the salient box is searched (the box is then scaled to the original
    picture): huge photographs need no 24-megapixel smoothing. ``batch_size`` is the number of
    views per forward pass.
    """

    variants: tuple[str, ...] = VARIANTS
    smooth_sigma: float = 3.0
    threshold: float = 0.5
    pad: float = 10.0
    min_size: float = 64.0
    blend_sigma: float = 10.0
    reference_size: int = REFERENCE_SIZE
    box_grid: int = 512
    topk: int = 5
    batch_size: int = 32

    def __post_init__(self) -> None:
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown:
            raise ValueError(f"unknown variant(s) {unknown}; expected some of {VARIANTS}")

    def as_dict(self) -> dict[str, object]:
        record = asdict(self)
        record["variants"] = list(self.variants)
        return record

    @classmethod
    def from_dict(cls, record: dict) -> ReclassifyConfig:
        record = dict(record)
        if "variants" in record:
            record["variants"] = tuple(record["variants"])
        return cls(**record)

    def needs_crop(self) -> bool:
        return any(v in ("crop", "crop+global") for v in self.variants)

    def decode_min_side(self, input_size: tuple[int, int]) -> int:
        """Shorter side a picture needs so that even the smallest crop still has at least the
        model input's pixels: decoders may shrink pictures (e.g. JPEG DCT scaling) down to it."""
        return math.ceil(max(input_size) * self.reference_size / self.min_size)


@dataclass
class Reclassification:
    """Softmax probabilities (N, K) per variant (``global`` included) and the crop boxes (N, 4)
    in pixels of the pictures the crops were cut from (None without a crop variant)."""

    probs: dict[str, torch.Tensor]
    boxes: torch.Tensor | None


def salient_region(saliency: torch.Tensor, size: tuple[int, int],
                   config: ReclassifyConfig = ReclassifyConfig()) -> torch.Tensor:
    """(H, W) bool: where one (h, w) map, resized to ``size`` and smoothed, reaches the threshold
    (or, when nothing does, its mean): the pixels the crop's (and so the blend's) box holds."""
    grid = F.interpolate(torch.nan_to_num(saliency.float(), nan=0.0)[None, None], size=size,
                         mode="bilinear", align_corners=False)
    grid = gaussian_blur(grid, config.smooth_sigma * min(size) / config.reference_size)[0, 0]
    salient = grid >= config.threshold
    return salient if salient.any() else grid >= grid.mean()


def salient_box(saliency: torch.Tensor, picture_size: tuple[int, int],
                config: ReclassifyConfig = ReclassifyConfig(),
                view: tuple[float, float, float, float] | None = None) -> tuple[int, int, int, int]:
    """The crop box (x0, y0, x1, y1), integer pixels of a picture of ``picture_size`` (H, W), for
    one (h, w) saliency map covering the picture's ``view`` box (default: all of it).

    Smooth, threshold (fall back to the mean), box the salient pixels, pad, enforce the minimum
    side, make square around the box's centre, shift inside the picture and clip: the result is
    square unless the square would not fit the picture.
    """
    height, width = picture_size
    vx0, vy0, vx1, vy1 = view if view is not None else (0.0, 0.0, float(width), float(height))
    vw, vh = vx1 - vx0, vy1 - vy0
    scale = min(1.0, config.box_grid / max(vw, vh))  # grid pixels per picture pixel
    gh, gw = max(1, round(vh * scale)), max(1, round(vw * scale))
    salient = salient_region(saliency, (gh, gw), config)
    side = min(height, width)
    rows = torch.nonzero(salient.any(dim=1)).flatten()
    cols = torch.nonzero(salient.any(dim=0)).flatten()
    # grid edges -> picture pixels
    x0 = vx0 + cols[0].item() * vw / gw
    x1 = vx0 + (cols[-1].item() + 1) * vw / gw
    y0 = vy0 + rows[0].item() * vh / gh
    y1 = vy0 + (rows[-1].item() + 1) * vh / gh
    unit = side / config.reference_size
    pad = config.pad * unit
    x0, y0, x1, y1 = x0 - pad, y0 - pad, x1 + pad, y1 + pad
    square = max(x1 - x0, y1 - y0, config.min_size * unit)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2

    def place(centre: float, extent: int) -> tuple[int, int]:
        length = min(max(1, round(square)), extent)
        start = round(centre - length / 2)
        start = min(max(start, 0), extent - length)
        return start, start + length

    bx0, bx1 = place(cx, width)
    by0, by1 = place(cy, height)
    return bx0, by0, bx1, by1


def crop_views(pictures: Sequence[torch.Tensor], boxes: torch.Tensor,
               input_size: tuple[int, int]) -> torch.Tensor:
    """(N, 3, H, W) crops: each box cut from its picture (3, h_i, w_i) and resized (bilinear,
    antialiased) to the model input."""
    views = []
    for picture, (x0, y0, x1, y1) in zip(pictures, boxes.tolist(), strict=True):
        crop = picture[None, :, int(y0):int(y1), int(x0):int(x1)].float()
        views.append(F.interpolate(crop, size=tuple(input_size), mode="bilinear",
                                   align_corners=False, antialias=True)[0].clamp(0, 1))
    return torch.stack(views)


def blend_views(images: torch.Tensor, saliency: torch.Tensor,
                config: ReclassifyConfig = ReclassifyConfig()) -> torch.Tensor:
    """Model-input images (N, 3, H, W) whose crop box (``salient_box`` on the model input,
    edges feathered over ``pad`` / 2 px) stays as it is and whose rest is replaced by their
    Gaussian blur (``blend_sigma``): the crop's focus without its zoom."""
    height, width = images.shape[-2:]
    unit = min(height, width) / config.reference_size
    weight = torch.zeros(len(images), 1, height, width)
    for i, sal in enumerate(saliency.cpu()):
        x0, y0, x1, y1 = salient_box(sal, (height, width), config)
        weight[i, :, y0:y1, x0:x1] = 1.0
    weight = gaussian_blur(weight, config.pad * unit / 2).clamp(0, 1).to(images)
    blurred = gaussian_blur(images, config.blend_sigma * unit)
    return blend(images, blurred, weight[:, 0])


@torch.no_grad()
def reclassify(model: nn.Module, images: torch.Tensor, saliency: torch.Tensor,
               pictures: Sequence[torch.Tensor] | None = None,
               views: Sequence[tuple[float, float, float, float]] | None = None,
               config: ReclassifyConfig = ReclassifyConfig(),
               global_probs: torch.Tensor | None = None) -> Reclassification:
    """Classify the mask-guided views of N images.

    ``images`` (N, 3, H, W) are the model inputs the masks were made on; ``saliency`` (N, h, w)
    their maps; ``pictures`` the same images at their original resolution (default: the model
    inputs), each covered by the masks in its ``views`` box (default: the whole picture).
    ``global_probs`` (N, K) saves recomputing the full images' softmax when several methods
    share it. Returns probabilities for ``global`` and each configured variant.
    """
    was_training = model.training
    model.eval()
    try:
        device = images.device
        input_size = tuple(images.shape[-2:])
        if global_probs is None:
            global_probs = class_probabilities(model, images, config.batch_size)
        probs = {BASELINE_VARIANT: global_probs}
        boxes = None
        if config.needs_crop():
            pictures = list(images) if pictures is None else list(pictures)
            views = views if views is not None else [None] * len(pictures)
            boxes = torch.tensor([salient_box(s, tuple(p.shape[-2:]), config, v)
                                  for s, p, v in zip(saliency.cpu(), pictures, views, strict=True)],
                                 dtype=torch.int64).reshape(-1, 4)
            crops = crop_views(pictures, boxes, input_size).to(device)
            crop_probs = class_probabilities(model, crops, config.batch_size)
            if "crop" in config.variants:
                probs["crop"] = crop_probs
            if "crop+global" in config.variants:
                probs["crop+global"] = 0.5 * (crop_probs + global_probs)
        if "blend" in config.variants:
            blended = blend_views(images, saliency.to(device), config)
            probs["blend"] = class_probabilities(model, blended, config.batch_size)
        return Reclassification(probs, boxes)
    finally:
        model.train(was_training)


def reclassify_pictures(module: nn.Module, device: torch.device, class_names: list[str],
                        config: ReclassifyConfig, pictures: Sequence[Picture],
                        joint: Mapping[str, np.ndarray]) -> list[dict[str, object]]:
    """``reclassify`` rows of a batch of pictures: the global baseline once (method ``none``),
    then every variant of each method's joint map (the global softmax is shared between
    methods); ``joint`` maps a method to its (rows, h, w) maps, row ``picture.index``."""
    x = torch.stack([p.model_input for p in pictures]).to(device)
    global_probs = class_probabilities(module, x, config.batch_size)
    records = [reclassify_record(p.row, BASELINE_METHOD, BASELINE_VARIANT, global_probs[j],
                                 class_names, config.topk, None)
               for j, p in enumerate(pictures)]
    works = [p.work for p in pictures]
    views = [p.work_view for p in pictures]
    for method, maps in joint.items():
        sal = torch.from_numpy(np.stack([maps[p.index] for p in pictures]).astype(np.float32))
        out = reclassify(module, x, sal, works, views, config, global_probs)
        for variant, probs in out.probs.items():
            if variant == BASELINE_VARIANT:
                continue
            for j, picture in enumerate(pictures):
                box = None
                if variant != "blend" and out.boxes is not None:
                    box = original_box(out.boxes[j].tolist(), picture.scale, picture.region)
                records.append(reclassify_record(picture.row, method, variant, probs[j],
                                                 class_names, config.topk, box))
    return records


def original_box(box: list[float], scale: tuple[float, float],
                 region: tuple[float, float, float, float] | None = None) -> CropBox:
    """A crop box in working pixels, in the original picture's pixels (``region``: where the
    working picture, a crop of a frame, lies in it)."""
    x0, y0, x1, y1 = to_original(box, region, scale)
    return round(x0), round(y0), round(x1), round(y1)
