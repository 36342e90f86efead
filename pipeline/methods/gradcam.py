"""Grad-CAM (Selvaraju et al. 2017) through captum's LayerGradCam, at the last convolutional
block: found automatically (EfficientNet-Lite0's ``_conv_head``, else the model's last
convolution, which is the synthetic CNN's last block once its BatchNorm is folded in) or named
by the ``layer`` setting."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fidoflow.pipeline.methods.base import Attribution, Method, unit_peak
from fidoflow.pipeline.methods.registry import register
from fidoflow.pipeline.models.layers import find_layer, layer_kinds, with_norm

KNOWN_LAYERS = ("net._conv_head", "_conv_head")  # EfficientNet(-Lite) heads, wrapped or bare


@dataclass(frozen=True)
class GradCamConfig:
    """``layer``: dotted module name (e.g. ``net._conv_head``, ``features.4``); None finds it."""

    layer: str | None = None


def last_conv_layer(model: nn.Module) -> str:
    """The layer Grad-CAM uses when none is named: a known head, else the last convolution
    (found by kind, so a TorchScript model's layers and a flat graph's nodes are found too),
    with its batch norm where a flat graph keeps the two apart."""
    kinds = layer_kinds(model)
    for name in KNOWN_LAYERS:
        if name in kinds:
            return name
    convs = [name for name, kind in kinds.items() if kind == "Conv2d"]
    if not convs:
        raise ValueError("model has no convolution for Grad-CAM; name one with gradcam:layer=...")
    return with_norm(model, convs[-1])


@register("gradcam", GradCamConfig, "Grad-CAM (captum LayerGradCam) at the last convolutional "
          "block, ReLU'd and scaled to peak 1")
class GradCam(Method):
    """Grad-CAM maps at the layer's resolution (7×7 for Lite0 at 224²)."""

    reads_layers = True

    def explain(self, images: torch.Tensor, targets: torch.Tensor,
                seeds: list[int]) -> Attribution:
        from captum.attr import LayerGradCam

        layer = find_layer(self.model, self.config.layer or last_conv_layer(self.model))
        cam = LayerGradCam(self.model, layer)
        maps = cam.attribute(images, target=targets, relu_attributions=True).detach()[:, 0]
        return Attribution(targets, {"joint": unit_peak(maps.float())})
