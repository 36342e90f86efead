"""Integrated Gradients (Sundararajan et al. 2017) through captum, from a blurred baseline
(an image with the object's detail removed, rather than black, which is itself evidence for
some classes), ``internal_batch_size`` interpolated images per forward pass."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fidoflow.pipeline.imaging.filters import gaussian_blur, scaled_sigma
from fidoflow.pipeline.methods.base import Attribution, Method, unit_peak
from fidoflow.pipeline.methods.registry import register


@dataclass(frozen=True)
class IgConfig:
    """``steps`` points of the path integral (Gauss-Legendre); the baseline is the image blurred
    with ``blur_sigma`` pixels at 224² (FIDO's blur in-fill)."""

    steps: int = 32
    blur_sigma: float = 10.0
    internal_batch_size: int = 32


@register("ig", IgConfig, "Integrated Gradients (captum) from a blurred baseline; positive "
          "evidence summed over channels")
class IntegratedGradients(Method):
    @classmethod
    def passes(cls, config: IgConfig) -> float:
        return config.steps * 3.0

    def explain(self, images: torch.Tensor, targets: torch.Tensor,
                seeds: list[int]) -> Attribution:
        from captum.attr import IntegratedGradients as CaptumIG

        baseline = gaussian_blur(images, scaled_sigma(images, self.config.blur_sigma))
        attr = CaptumIG(self.model).attribute(
            images, baselines=baseline, target=targets, n_steps=self.config.steps,
            internal_batch_size=self.config.internal_batch_size)
        return Attribution(targets, {"joint": unit_peak(attr.detach().sum(1).clamp(min=0))})
