"""RISE (Petsiuk, Das, Saenko, BMVC 2018): randomised input sampling.

N random binary masks are drawn on a coarse s × s grid (each cell kept with probability p),
upsampled bilinearly to (s + 1) cells of ⌈H/s⌉ × ⌈W/s⌉ pixels and cropped at a random shift, so
that they are smooth and not aligned to the grid. The image is multiplied by each mask (the
dropped part filled with ``infill``; the paper's I ⊙ M is ``zeros``) and classified; the
saliency of a pixel is the mean target probability over the masks that keep it:
``S = Σ_i p_c(I ⊙ M_i) · M_i / (N · p)``. Forward passes go ``batch`` masked images at a time.

Each image draws its masks from its own seed, so its map does not depend on its batch. The map
is min-max scaled per image (a monotone rescale: the pixel ranking, hence deletion and
insertion, is RISE's own; without it every map carries the mean probability as an offset).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fidoflow.pipeline.imaging.infill import make_infill
from fidoflow.pipeline.methods.base import Attribution, Method, image_generators
from fidoflow.pipeline.methods.registry import register
from fidoflow.pipeline.perturbation import Perturbation


@dataclass(frozen=True)
class RiseConfig:
    """The paper's setting for a ResNet-50 is N = 8000, for VGG16 4000; s = 7, p = 0.5."""

    masks: int = 4000
    grid: int = 7
    keep: float = 0.5
    infill: str = "zeros"
    batch: int = 64


def random_masks(n: int, grid: int, keep: float, size: tuple[int, int],
                 generator: torch.Generator) -> torch.Tensor:
    """``n`` smooth RISE masks (n, H, W) in [0, 1]."""
    h, w = size
    cell_h, cell_w = math.ceil(h / grid), math.ceil(w / grid)
    cells = (torch.rand(n, 1, grid, grid, generator=generator) < keep).float()
    up = F.interpolate(cells, size=((grid + 1) * cell_h, (grid + 1) * cell_w), mode="bilinear",
                       align_corners=False)[:, 0]
    dy = torch.randint(0, cell_h, (n,), generator=generator)
    dx = torch.randint(0, cell_w, (n,), generator=generator)
    return torch.stack([up[i, y:y + h, x:x + w] for i, (y, x) in enumerate(zip(dy.tolist(),
                                                                              dx.tolist()))])


@register("rise", RiseConfig, "RISE (Petsiuk et al. 2018): mean target probability under random "
          "smooth masks that keep each pixel")
class Rise(Method):
    @classmethod
    def passes(cls, config: RiseConfig) -> float:
        return float(config.masks)

    @torch.no_grad()
    def explain(self, images: torch.Tensor, targets: torch.Tensor,
                seeds: list[int]) -> Attribution:
        cfg = self.config
        size = tuple(images.shape[-2:])
        generators = image_generators(seeds)
        fills = make_infill(images, cfg.infill, generators)
        maps = []
        for image, fill, target, generator in zip(images, fills, targets, generators, strict=True):
            scene = Perturbation(self.model, image, fill, target)
            total = torch.zeros(size, device=images.device)
            for start in range(0, cfg.masks, cfg.batch):
                count = min(cfg.batch, cfg.masks - start)
                masks = random_masks(count, cfg.grid, cfg.keep, size, generator).to(images.device)
                probs = scene.probability(masks)
                total += torch.einsum("n,nhw->hw", probs, masks)
            maps.append(total / (cfg.masks * cfg.keep))
        saliency = torch.stack(maps)
        low = saliency.flatten(1).amin(dim=1).view(-1, 1, 1)
        high = saliency.flatten(1).amax(dim=1).view(-1, 1, 1)
        return Attribution(targets, {"joint": (saliency - low) / (high - low).clamp_min(1e-12)})
