"""The gradient and occlusion methods through captum, on a toy convolutional classifier whose
evidence is a known square: each puts clearly more of its saliency there than the square's
share of the image, whatever else shares its batch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fidoflow.pipeline.methods import parse_methods
from fidoflow.pipeline.methods.gradcam import last_conv_layer
from fidoflow.pipeline.metrics.box import share_inside
from fidoflow.pipeline.models.layers import find_layer
from tests.conftest import SQUARE

SIZE = 32
AREA = (SQUARE[0].stop - SQUARE[0].start) * (SQUARE[1].stop - SQUARE[1].start) / SIZE**2
KINDS = ("gradcam", "ig", "saliency", "smoothgrad", "occlusion")


class ConvSquare(nn.Module):
    """A 3×3 averaging convolution and ReLU; class 1's logit grows with the mean activation
    inside SQUARE, class 0's is a constant: the evidence lies in the square alone."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        nn.init.constant_(self.conv.weight, 1 / 27)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        evidence = torch.relu(self.conv(x))[:, :, SQUARE[0], SQUARE[1]].mean(dim=(1, 2, 3))
        return torch.stack([torch.full_like(evidence, 2.0), 6.0 * evidence], dim=1)


def images(n: int, seed: int = 0) -> torch.Tensor:
    """Dark textured backgrounds, a textured bright square where the evidence is."""
    gen = torch.Generator().manual_seed(seed)
    x = 0.1 * torch.rand(n, 3, SIZE, SIZE, generator=gen)
    x[:, :, SQUARE[0], SQUARE[1]] = 0.6 + 0.4 * torch.rand(n, 3, 8, 8, generator=gen)
    return x


def square_box(n: int) -> torch.Tensor:
    return torch.tensor([[SQUARE[1].start, SQUARE[0].start, SQUARE[1].stop, SQUARE[0].stop]]
                        * n, dtype=torch.float32)


@pytest.mark.parametrize("kind", KINDS)
def test_saliency_mass_sits_on_the_evidence(kind: str) -> None:
    spec = parse_methods(kind)[kind]
    x = images(6)
    with spec.build(ConvSquare()) as method:
        out = method.attribute(x, torch.ones(6, dtype=torch.long), list(range(6)), size=SIZE)
    joint = out.maps["joint"]
    assert joint.shape == (6, SIZE, SIZE) and joint.min() >= 0
    torch.testing.assert_close(joint.flatten(1).amax(1), torch.ones(6))
    share = share_inside(joint, square_box(6))
    assert (share > 5 * AREA).all(), share  # the square is 6 % of the image


@pytest.mark.parametrize("kind", ("gradcam", "ig", "saliency", "occlusion"))
def test_an_image_gets_the_same_map_alone_and_in_a_batch(kind: str) -> None:
    spec = parse_methods(kind)[kind]
    x = images(5, seed=3)
    with spec.build(ConvSquare()) as method:
        together = method.attribute(x, torch.ones(5, dtype=torch.long), batch_size=5)
        alone = method.attribute(x[2:3], torch.ones(1, dtype=torch.long))
    torch.testing.assert_close(together.maps["joint"][2], alone.maps["joint"][0],
                               atol=1e-4, rtol=1e-4)


class Squares(nn.Module):
    """Class 1's logit is the sum of squared pixels: its gradient changes with the noise."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        energy = (x**2).sum(dim=(1, 2, 3))
        return torch.stack([torch.zeros_like(energy), energy], dim=1)


def test_smoothgrad_repeats_with_the_same_seeds() -> None:
    spec = parse_methods("smoothgrad:samples=4")["smoothgrad"]
    x, t = images(2), torch.ones(2, dtype=torch.long)
    with spec.build(Squares()) as method:
        a = method.attribute(x, t, [1, 2]).maps["joint"]
        b = method.attribute(x, t, [1, 2]).maps["joint"]
        c = method.attribute(x, t, [1, 3]).maps["joint"]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_gradcam_layer_is_found_for_known_models_and_settable() -> None:
    from fidoflow.pipeline.models.loading import load_model

    lite0 = load_model("efficientnet-lite0")
    assert last_conv_layer(lite0.module) == "net._conv_head"
    fused = lite0.on(torch.device("cpu"))
    assert last_conv_layer(fused) == "net._conv_head"
    synthetic = load_model("synthetic-cnn")
    assert last_conv_layer(synthetic.on(torch.device("cpu"))) == "features.4.0"
    assert last_conv_layer(ConvSquare()) == "conv"
    spec = parse_methods("cam=gradcam:layer=conv")["cam"]
    with spec.build(ConvSquare()) as method:
        assert method.attribute(images(1)).maps["joint"].shape == (1, SIZE, SIZE)
    with pytest.raises(ValueError, match="no layer 'nope'"):
        find_layer(ConvSquare(), "nope")


def test_gradcam_on_a_torchscript_model_says_in_one_line_what_to_give_instead() -> None:
    scripted = torch.jit.trace(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), images(1))
    assert last_conv_layer(scripted) == "0"  # found by its class name
    with pytest.raises(ValueError, match="TorchScript model, whose layers take no hooks") as err:
        find_layer(scripted, "0")
    assert "\n" not in str(err.value) and "state_dict" in str(err.value)
