"""RISE on the toy convolutional classifier whose evidence is a known square."""

from __future__ import annotations

import torch

from fidoflow.pipeline.methods import parse_methods
from fidoflow.pipeline.methods.rise import random_masks
from fidoflow.pipeline.metrics.box import share_inside
from tests.test_gradient_methods import AREA, SIZE, ConvSquare, images, square_box


def test_masks_are_smooth_shifted_and_keep_about_p() -> None:
    masks = random_masks(500, 7, 0.5, (32, 40), torch.Generator().manual_seed(0))
    assert masks.shape == (500, 32, 40) and masks.min() >= 0 and masks.max() <= 1 + 1e-6
    assert abs(masks.mean().item() - 0.5) < 0.03
    assert ((masks > 0.05) & (masks < 0.95)).float().mean() > 0.2  # bilinear, not binary


def test_rise_mass_sits_on_the_evidence_and_ignores_batch_partners() -> None:
    spec = parse_methods("rise:batch=500")["rise"]  # the paper's 4000 masks
    x, t = images(4), torch.ones(4, dtype=torch.long)
    with spec.build(ConvSquare()) as method:
        out = method.attribute(x, t, [10, 11, 12, 13], size=SIZE)
        alone = method.attribute(x[1:2], t[1:2], [11], size=SIZE)
    joint = out.maps["joint"]
    share = share_inside(joint, square_box(4))
    assert (share > 3 * AREA).all(), share
    torch.testing.assert_close(joint[1], alone.maps["joint"][0], atol=1e-5, rtol=0)
