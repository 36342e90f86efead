"""iGOS++ (Khorram, Lawson, Li, ACM CHIL 2021): I-GOS with a deletion and an insertion mask.

A deletion mask M_d and an insertion mask M_i (1 = keep, both start at 1) and their product
M = M_d ⊙ M_i minimise ``del(M_d) + ins(M_i) + del(M) + ins(M) + L1 · mean|1 − M| + L2 · BTV(M)``
where del(m) = p_c(m ⊙ x + (1 − m) ⊙ blur) (deleting the salient part must destroy the class),
ins(m) = −p_c((1 − m) ⊙ x + m ⊙ blur) (inserting it alone must restore it), and BTV is the
bilateral total variation: each neighbour pair's |ΔM| weighted by exp(−ΔI² / 0.01), ΔI the
image's difference there (at mask resolution), so the mask may jump at the image's edges. The
descent (integrated gradients with noise, Armijo step, clamp) is I-GOS's (igos.py).
Saliency = 1 − M.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fidoflow.pipeline.imaging.filters import resize_maps
from fidoflow.pipeline.methods.base import Attribution, Method, image_generators
from fidoflow.pipeline.methods.igos import IgosConfig, Masks, descend
from fidoflow.pipeline.methods.registry import register
from fidoflow.pipeline.perturbation import Perturbation


@dataclass(frozen=True)
class IgosppConfig(IgosConfig):
    """I-GOS's settings plus the bilateral TV's image-difference scale (0.01)."""

    bilateral: float = 0.01


def edge_weights(images: torch.Tensor, size: int, scale: float) -> tuple[torch.Tensor, ...]:
    """exp(−ΔI² / scale) for vertical and horizontal neighbour pairs of the image at mask size."""
    small = resize_maps(images, (size, size))
    dv = (small[..., 1:, :] - small[..., :-1, :]).pow(2).sum(1)
    dh = (small[..., :, 1:] - small[..., :, :-1]).pow(2).sum(1)
    return torch.exp(-dv / scale), torch.exp(-dh / scale)


def bilateral_tv(mask: torch.Tensor, weights: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Mean edge-weighted |ΔM| over all neighbour pairs of (N, s, s) masks, per image."""
    wv, wh = weights
    dv = (wv * (mask[:, 1:, :] - mask[:, :-1, :]).abs()).flatten(1)
    dh = (wh * (mask[:, :, 1:] - mask[:, :, :-1]).abs()).flatten(1)
    return (dv.sum(1) + dh.sum(1)) / (dv.shape[1] + dh.shape[1])


@register("igospp", IgosppConfig, "iGOS++ (Khorram et al. 2021): deletion and insertion masks, "
          "bilateral TV, I-GOS's integrated-gradient descent; saliency = 1 − their product")
class Igospp(Method):
    @classmethod
    def passes(cls, config: IgosppConfig) -> float:
        """I-GOS's step over four blends (deletion and insertion of each mask and of both)."""
        return config.iterations * 4 * (config.integration_steps * 3 + 3)

    scalar_names = ("p_deleted", "p_inserted")

    def explain(self, images: torch.Tensor, targets: torch.Tensor,
                seeds: list[int]) -> Attribution:
        cfg = self.config
        generators = image_generators(seeds)
        scene = Perturbation.infilled(self.model, images, targets, cfg.infill, generators)
        weights = edge_weights(images, cfg.mask_size, cfg.bilateral)
        deleted, inserted = scene.probability, scene.swapped().probability

        def data(masks: Masks) -> torch.Tensor:
            md, mi = masks
            both = md * mi
            return deleted(md) - inserted(mi) + deleted(both) - inserted(both)

        def penalty(masks: Masks) -> torch.Tensor:
            both = masks[0] * masks[1]
            return cfg.l1 * (1 - both).abs().flatten(1).mean(1) + cfg.l2 * bilateral_tv(
                both, weights)

        n, s = len(images), cfg.mask_size
        masks = [torch.ones(n, s, s, device=images.device) for _ in range(2)]
        for _ in range(cfg.iterations):
            masks = descend(data, penalty, masks, cfg, generators)
        with torch.no_grad():
            both = masks[0] * masks[1]
            scalars = {"p_deleted": deleted(both), "p_inserted": inserted(both)}
        return Attribution(targets, {"joint": 1 - both}, scalars)
