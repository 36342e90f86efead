"""Occlusion (Zeiler & Fergus 2014) through captum: slide a window over the image, replace it
by the blurred image, and credit its pixels with the drop of the target's logit (positive part,
summed over channels). Window and stride are pixels at 224², scaled with the image."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fidoflow.pipeline.imaging.filters import gaussian_blur, scaled_sigma
from fidoflow.pipeline.methods.base import Attribution, Method, unit_peak
from fidoflow.pipeline.methods.registry import register


@dataclass(frozen=True)
class OcclusionConfig:
    """``window``/``stride`` at 224² (32/16: 169 occluded copies per image); ``baseline``
    "blur" (FIDO's blur in-fill) or "zeros"; ``per_eval`` copies per forward pass."""

    window: int = 32
    stride: int = 16
    baseline: str = "blur"
    per_eval: int = 32


@register("occlusion", OcclusionConfig, "occlusion (captum): drop of the target logit when a "
          "sliding window is blurred")
class Occlusion(Method):
    @classmethod
    def passes(cls, config: OcclusionConfig) -> float:
        """One forward per window position, counted at 224² (the common input)."""
        return ((224 - config.window) // config.stride + 1) ** 2 + 1.0

    def explain(self, images: torch.Tensor, targets: torch.Tensor,
                seeds: list[int]) -> Attribution:
        from captum.attr import Occlusion as CaptumOcclusion

        cfg = self.config
        if cfg.baseline not in ("blur", "zeros"):
            raise ValueError(f"occlusion baseline {cfg.baseline!r}: expected blur or zeros")
        window = max(1, round(scaled_sigma(images, cfg.window)))
        stride = max(1, round(scaled_sigma(images, cfg.stride)))
        base = (gaussian_blur(images, scaled_sigma(images, 10.0)) if cfg.baseline == "blur"
                else torch.zeros_like(images))
        attr = CaptumOcclusion(self.model).attribute(
            images, sliding_window_shapes=(3, window, window), strides=(3, stride, stride),
            baselines=base, target=targets, perturbations_per_eval=cfg.per_eval)
        return Attribution(targets, {"joint": unit_peak(attr.detach().sum(1).clamp(min=0))})
