"""Vanilla gradient saliency (Simonyan et al. 2014) through captum: |∂ logit_c / ∂ pixel|, the
largest over the colour channels."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fidoflow.pipeline.methods.base import Attribution, Method, unit_peak
from fidoflow.pipeline.methods.registry import register


@dataclass(frozen=True)
class SaliencyConfig:
    """Vanilla gradients have no setting."""


@register("saliency", SaliencyConfig, "gradient saliency (captum Saliency): |d logit / d pixel|, "
          "max over channels")
class Saliency(Method):
    def explain(self, images: torch.Tensor, targets: torch.Tensor,
                seeds: list[int]) -> Attribution:
        from captum.attr import Saliency as CaptumSaliency

        grads = CaptumSaliency(self.model).attribute(images.detach().requires_grad_(), target=targets,
                                                   abs=True)
        return Attribution(targets, {"joint": unit_peak(grads.detach().amax(dim=1))})
