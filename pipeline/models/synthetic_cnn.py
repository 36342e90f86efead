"""The small CNN that classifies the synthetic birds (pipeline/archive/synthetic.py) by their wing patch.

Global average pooling over the last conv block keeps it fully convolutional (any image size)
and gives Grad-CAM-like methods a meaningful layer, named by ``gradcam_layer``.
"""

from __future__ import annotations

from importlib import resources

import torch
from torch import nn

from fidoflow.pipeline.archive.synthetic import CLASS_NAMES

WEIGHTS = "synthetic_cnn.pt"
NUM_CLASSES = 8


def _block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


class SyntheticCNN(nn.Module):
    """Pixel-space images (N, 3, H, W) in [0, 1] -> logits (N, K); normalisation inside."""

    gradcam_layer = "features.4"  # output of the last conv block (conv, BN, ReLU), stride 8

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        widths = [(3, 16, 2), (16, 32, 2), (32, 64, 1), (64, 64, 2), (64, 128, 1)]
        self.features = nn.Sequential(*(_block(i, o, s) for i, o, s in widths))
        self.classifier = nn.Linear(128, num_classes)
        self.register_buffer("mean", torch.full((1, 3, 1, 1), 0.45), persistent=False)
        self.register_buffer("std", torch.full((1, 3, 1, 1), 0.25), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features((x - self.mean) / self.std)
        return self.classifier(h.mean(dim=(2, 3)))


def load_synthetic_classifier() -> tuple[SyntheticCNN, tuple[str, ...]]:
    """The committed classifier in eval mode, and its class names (index = logit)."""
    model = SyntheticCNN()
    with resources.files("fidoflow.pipeline.data").joinpath(WEIGHTS).open("rb") as f:
        model.load_state_dict(torch.load(f, map_location="cpu", weights_only=True))
    return model.eval(), CLASS_NAMES[:NUM_CLASSES]
