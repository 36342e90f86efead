"""Gradient baselines FIDO is judged against, built on captum rather than hand-written copies."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attribution import Attribution, Attributor


def find_layer(model: nn.Module, name: str) -> nn.Module:
    """A sub-module by dotted name, e.g. ``net._conv_head`` or ``features.4``."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"model has no layer {name!r}") from None


class GradCam(Attributor):
    """Grad-CAM (captum's LayerGradCam) at ``layer``, ReLU'd and scaled to [0, 1] per image."""

    name = "gradcam"

    def __init__(self, model: nn.Module, layer: str) -> None:
        super().__init__(model)
        self.layer = layer

    def attribute(
        self, images: torch.Tensor, targets: torch.Tensor | None = None, seeds: list[int] | None = None
    ) -> Attribution:
        from captum.attr import LayerGradCam

        if targets is None:
            targets = self.predict(images)
        cam = LayerGradCam(self.model, find_layer(self.model, self.layer))
        maps = cam.attribute(images, target=targets, relu_attributions=True).detach()[:, 0]
        peak = maps.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, 1, 1)
        return Attribution(joint=maps / peak, target=targets)


def resize_maps(maps: torch.Tensor, size: int) -> torch.Tensor:
    """(N, h, w) maps resampled to size × size (area for shrinking, bilinear for growing)."""
    mode = "area" if maps.shape[-1] > size else "bilinear"
    kwargs = {} if mode == "area" else {"align_corners": False}
    return F.interpolate(maps[:, None], size=(size, size), mode=mode, **kwargs)[:, 0]
