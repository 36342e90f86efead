"""Mask-guided re-classification: the crop box recipe by hand, the views, and a toy model whose
answer changes only when it looks at the salient region closely."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fidoflow.pipeline.analysis.reclassify import (
    ReclassifyConfig,
    blend_views,
    crop_views,
    reclassify,
    salient_box,
)
from fidoflow.pipeline.imaging.filters import gaussian_blur

# parameters at 224 px, so that a 224 px picture uses them as they are
PLAIN = ReclassifyConfig(smooth_sigma=0.0)


def blob(size: int, box: tuple[int, int, int, int], value: float = 1.0) -> torch.Tensor:
    """A (size, size) map, ``value`` inside box (x0, y0, x1, y1), 0 elsewhere."""
    sal = torch.zeros(size, size)
    x0, y0, x1, y1 = box
    sal[y0:y1, x0:x1] = value
    return sal


def test_box_is_padded_squared_to_the_minimum_and_centred() -> None:
    # salient region 20 x 10 px at (100, 100): padded by 10 -> 40 x 30, then at least 64, square
    x0, y0, x1, y1 = salient_box(blob(224, (100, 100, 120, 110)), (224, 224), PLAIN)
    assert (x1 - x0, y1 - y0) == (64, 64)
    assert (x0 + x1) / 2 == pytest.approx(110, abs=1) and (y0 + y1) / 2 == pytest.approx(105, abs=1)


def test_large_region_gives_a_square_around_its_longer_side() -> None:
    x0, y0, x1, y1 = salient_box(blob(224, (40, 60, 140, 100)), (224, 224), PLAIN)
    assert (x1 - x0, y1 - y0) == (120, 120)  # 100 + 2 * 10 padding, square
    assert (x0, x1) == (30, 150)


def test_box_near_the_border_is_shifted_inside_and_clipped_to_the_picture() -> None:
    x0, y0, x1, y1 = salient_box(blob(224, (0, 0, 10, 10)), (224, 224), PLAIN)
    assert (x0, y0, x1, y1) == (0, 0, 64, 64)
    # a picture narrower than the square: clipped, no longer square
    wide = salient_box(torch.ones(8, 8), (50, 300), PLAIN)
    assert wide == (0, 0, 300, 50)


def test_threshold_falls_back_to_the_mean_when_nothing_reaches_it() -> None:
    sal = blob(224, (150, 20, 170, 40), value=0.3) + 0.01
    x0, y0, x1, y1 = salient_box(sal, (224, 224), PLAIN)
    assert x0 <= 150 and x1 >= 170 and y0 <= 20 and y1 >= 40 and x1 - x0 == 64


def test_parameters_scale_with_the_picture_and_low_resolution_maps_upsample() -> None:
    small = salient_box(blob(28, (12, 12, 14, 14)), (224, 224), PLAIN)
    large = salient_box(blob(28, (12, 12, 14, 14)), (448, 448), PLAIN)
    assert tuple(2 * v for v in small) == large
    assert small[2] - small[0] == 64 and large[2] - large[0] == 128


def test_view_box_places_the_map_inside_the_picture() -> None:
    # the model saw the centre square (50..250) of a 300 x 200 picture (a "crop" model)
    sal = blob(20, (0, 0, 2, 2))  # the map's top-left corner
    box = salient_box(sal, (200, 300), PLAIN, view=(50.0, 0.0, 250.0, 200.0))
    # salient x 50..70, y 0..20; parameters scale to the 200 px side: at least 57 px, square
    # around x = 60, shifted down inside the picture
    assert box[1:] == (0, box[0] + 57, 57) and abs((box[0] + box[2]) / 2 - 60) <= 1.5


def test_smoothing_is_applied_before_the_threshold() -> None:
    spike = blob(224, (100, 100, 101, 101))  # one pixel: smoothed far below 0.5
    smooth = salient_box(spike + 0.0, (224, 224), ReclassifyConfig(smooth_sigma=3.0))
    assert smooth[2] - smooth[0] == 64  # fell back to the mean: around the spike
    assert smooth[0] <= 100 < smooth[2]


def test_crop_views_cut_the_box_and_resize_it() -> None:
    picture = torch.zeros(3, 40, 60)
    picture[:, 10:20, 30:40] = 1.0
    views = crop_views([picture], torch.tensor([[30, 10, 40, 20]]), (5, 5))
    assert views.shape == (1, 3, 5, 5) and torch.allclose(views, torch.ones_like(views))


def test_blend_keeps_the_crop_box_whole_and_blurs_the_rest() -> None:
    images = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    cfg = ReclassifyConfig(blend_sigma=10.0)
    blurred = gaussian_blur(images, 10.0)
    torch.testing.assert_close(blend_views(images, torch.ones(2, 8, 8), cfg), images)
    # a concentrated map that reaches only 0.6: its box stays sharp, not blurred by 40 %
    sal = torch.zeros(2, 28, 28)
    sal[:, 4:10, 4:10] = 0.6
    out = blend_views(images, sal, cfg)
    torch.testing.assert_close(out[:, :, 40:72, 40:72], images[:, :, 40:72, 40:72], atol=0.01, rtol=0)
    torch.testing.assert_close(out[:, :, 150:, 150:], blurred[:, :, 150:, 150:])
    # the edge is feathered: between the box and the far field the weight is partial
    edge = (out[:, :, 56, 86] - blurred[:, :, 56, 86]) / (images[:, :, 56, 86] - blurred[:, :, 56, 86])
    assert ((edge > 0.05) & (edge < 0.95)).all()


class BrightShare(nn.Module):
    """Class 1 wins when more than a third of the input is bright: a small bright object in a
    large dark scene is class 0 on the full image, class 1 once cropped."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        share = (x.mean(dim=1) > 0.5).float().mean(dim=(1, 2))
        return torch.stack([torch.zeros_like(share), 30 * (share - 1 / 3)], dim=1)


def test_crop_changes_the_answer_and_crop_global_averages_softmaxes() -> None:
    pictures = torch.full((2, 3, 256, 256), 0.1)
    pictures[0, :, 40:70, 150:180] = 0.9
    pictures[1, :, 180:200, 20:60] = 0.9
    inputs = torch.nn.functional.interpolate(pictures, size=(64, 64), mode="bilinear",
                                             antialias=True, align_corners=False)
    sal = torch.zeros(2, 16, 16)
    sal[0, 2:5, 9:12] = 1.0
    sal[1, 11:13, 1:4] = 1.0
    model = BrightShare()
    out = reclassify(model, inputs, sal, list(pictures),
                     config=ReclassifyConfig(smooth_sigma=0.0, pad=0.0, min_size=0.0))
    assert set(out.probs) == {"global", "crop", "blend", "crop+global"}
    assert out.probs["global"].argmax(1).tolist() == [0, 0]
    assert out.probs["crop"].argmax(1).tolist() == [1, 1]
    torch.testing.assert_close(out.probs["crop+global"],
                               (out.probs["crop"] + out.probs["global"]) / 2)
    x0, y0, x1, y1 = out.boxes[0].tolist()  # in pixels of the 256 px picture
    assert x0 <= 150 and x1 >= 176 and y0 <= 40 and y1 >= 64 and x1 - x0 == y1 - y0


def test_only_the_requested_variants_and_no_crop_without_a_crop_variant() -> None:
    images = torch.rand(1, 3, 16, 16)
    out = reclassify(BrightShare(), images, torch.ones(1, 4, 4),
                     config=ReclassifyConfig(variants=("blend",)))
    assert set(out.probs) == {"global", "blend"} and out.boxes is None
    with pytest.raises(ValueError, match="unknown variant"):
        ReclassifyConfig(variants=("zoom",))


def test_config_round_trip_and_decode_side() -> None:
    cfg = ReclassifyConfig(pad=5.0, variants=("crop",))
    assert ReclassifyConfig.from_dict(cfg.as_dict()) == cfg
    # the smallest crop (64 px at 224) of a picture decoded at this side still has 224 px
    assert ReclassifyConfig().decode_min_side((224, 224)) == 784
