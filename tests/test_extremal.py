"""Extremal perturbation on the toy convolutional classifier whose evidence is a known square."""

from __future__ import annotations

import torch
from torch import nn

from fidoflow.pipeline.methods import parse_methods
from fidoflow.pipeline.methods.extremal import area_vector
from fidoflow.pipeline.metrics.box import share_inside
from tests.test_gradient_methods import AREA, SIZE, ConvSquare, images, square_box


class SteepSquare(nn.Module):
    """ConvSquare with logits × 200: the paper's area weight 300 assumes ImageNet-scale logits,
    against which the toy's (a few units) cannot move a mask."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = ConvSquare()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 200 * self.inner(x)


def test_area_vector_holds_the_area_in_ones() -> None:
    ref = area_vector(0.1, 100)
    assert ref.sum() == 10 and (ref[:90] == 0).all() and (ref[90:] == 1).all()


def test_extremal_mass_sits_on_the_evidence_and_ignores_batch_partners() -> None:
    spec = parse_methods("extremal:areas=0.07:iterations=100")["extremal"]  # the square is 6 % of the image
    x, t = images(3), torch.ones(3, dtype=torch.long)
    with spec.build(SteepSquare()) as method:
        out = method.attribute(x, t, [0, 1, 2], size=SIZE)
        alone = method.attribute(x[1:2], t[1:2], [1], size=SIZE)
    joint = out.maps["joint"]
    share = share_inside(joint, square_box(3))
    assert (share > 5 * AREA).all(), share
    torch.testing.assert_close(joint[1], alone.maps["joint"][0], atol=1e-4, rtol=0)
