"""Hand-computed cases of the evaluation metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from fidoflow.pipeline.imaging.filters import total_variation
from fidoflow.pipeline.metrics.box import box_iou_fdr, boxes_to_masks, share_inside
from fidoflow.pipeline.metrics.deletion_insertion import deletion_insertion, igos_blur
from fidoflow.pipeline.metrics.pointing import pointing_game
from fidoflow.pipeline.models.device import CPU_FORWARD_BATCH, GPU_FORWARD_BATCH, forward_batch

WEIGHTS = torch.tensor([0.4, 0.3, 0.2, 0.1])  # of the 4 pixels of a 2x2 image, row-major


class WeightedPixels(nn.Module):
    """Target (class 0) probability = weighted sum of the red channel: known at every step."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = (x[:, 0].flatten(1) * WEIGHTS).sum(1).clamp(1e-12, 1 - 1e-12)
        return torch.stack([q.log(), (1 - q).log()], dim=1)


def toy(saliency: list[float]) -> dict:
    return {"model": WeightedPixels(), "images": torch.ones(1, 3, 2, 2),
            "saliency": torch.tensor(saliency).view(1, 2, 2), "targets": torch.tensor([0]),
            "steps": 4, "baseline": "zeros"}


@pytest.mark.parametrize("batch_size", [1, 2, 3, 64])
def test_perfect_and_inverted_ranking_by_hand(batch_size: int) -> None:
    perfect = deletion_insertion(**toy([0.4, 0.3, 0.2, 0.1]), batch_size=batch_size)
    inverted = deletion_insertion(**toy([0.1, 0.2, 0.3, 0.4]), batch_size=batch_size)
    # deletion removes 0.4, 0.3, 0.2, 0.1 in turn: probabilities 1, .6, .3, .1, 0
    torch.testing.assert_close(perfect.deletion_curve[0], torch.tensor([1, .6, .3, .1, 0]))
    torch.testing.assert_close(perfect.insertion_curve[0], torch.tensor([0, .4, .7, .9, 1]))
    torch.testing.assert_close(perfect.fractions, torch.tensor([0, .25, .5, .75, 1]))
    # trapezoid: 0.25 * (0.8 + 0.45 + 0.2 + 0.05) = 0.375
    assert perfect.deletion_auc.item() == pytest.approx(0.375)
    assert perfect.insertion_auc.item() == pytest.approx(0.625)
    assert inverted.deletion_auc.item() == pytest.approx(0.625)
    assert inverted.insertion_auc.item() == pytest.approx(0.375)


def test_steps_not_dividing_the_pixels_keep_both_ends() -> None:
    out = deletion_insertion(**{**toy([0.4, 0.3, 0.2, 0.1]), "steps": 3})
    torch.testing.assert_close(out.fractions, torch.tensor([0, .25, .5, 1]))
    torch.testing.assert_close(out.deletion_curve[0], torch.tensor([1, .6, .3, 0]))
    expected = 0.25 * (1 + .6) / 2 + 0.25 * (.6 + .3) / 2 + 0.5 * (.3 + 0) / 2
    assert out.deletion_auc.item() == pytest.approx(expected)


def test_ties_break_by_pixel_order() -> None:
    tied = deletion_insertion(**toy([0.5, 0.5, 0.5, 0.5]))
    torch.testing.assert_close(tied.deletion_curve[0], torch.tensor([1, .6, .3, .1, 0]))


class CountingPasses(WeightedPixels):
    """WeightedPixels that remembers how many images each forward pass held."""

    def __init__(self) -> None:
        super().__init__()
        self.passes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.passes.append(len(x))
        return super().forward(x)


def test_on_a_cpu_the_curves_pass_a_few_images_at_a_time_with_the_same_answer() -> None:
    model = CountingPasses()
    default = deletion_insertion(**{**toy([0.4, 0.3, 0.2, 0.1]), "model": model})
    assert max(model.passes) == CPU_FORWARD_BATCH == forward_batch(torch.device("cpu"))
    wide = deletion_insertion(**toy([0.4, 0.3, 0.2, 0.1]), batch_size=64)
    torch.testing.assert_close(default.deletion_curve, wide.deletion_curve)
    torch.testing.assert_close(default.insertion_curve, wide.insertion_curve)
    assert forward_batch(torch.device("cuda")) == GPU_FORWARD_BATCH > CPU_FORWARD_BATCH


def test_images_in_one_batch_do_not_interact_and_low_resolution_maps_upsample() -> None:
    images = torch.ones(2, 3, 2, 2)
    saliency = torch.stack([torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])])  # (2, 1, 2)
    out = deletion_insertion(WeightedPixels(), images, saliency, torch.tensor([0, 0]), steps=2,
                             baseline="zeros", batch_size=4)
    # left column (weights .4, .2) first, or right column (.3, .1) first
    torch.testing.assert_close(out.deletion_curve, torch.tensor([[1, .4, 0], [1, .6, 0]]))


def test_blur_baseline_of_a_constant_image_changes_nothing() -> None:
    images = torch.full((1, 3, 2, 2), 0.5)
    out = deletion_insertion(**{**toy([0.4, 0.3, 0.2, 0.1]), "images": images, "baseline": "blur"})
    torch.testing.assert_close(out.deletion_curve, torch.full((1, 5), 0.5))
    assert out.deletion_auc.item() == pytest.approx(0.5)


def test_unknown_baseline_is_refused() -> None:
    with pytest.raises(ValueError, match="baseline"):
        deletion_insertion(**{**toy([1, 0, 0, 0]), "baseline": "mean"})


def test_igos_blur_matches_opencv_kernel_51_sigma_50() -> None:
    cv2 = pytest.importorskip("cv2")
    img = np.random.default_rng(0).random((224, 224, 3), dtype=np.float32)
    expected = cv2.GaussianBlur(img, (51, 51), 50)
    got = igos_blur(torch.from_numpy(img).permute(2, 0, 1)[None])[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)


def peak_map(row: int, col: int, size: int = 40) -> torch.Tensor:
    m = torch.zeros(1, size, size)
    m[0, row, col] = 1.0
    return m


@pytest.mark.parametrize("col, hit", [(34, True), (35, False), (15, True), (0, True)])
def test_pointing_game_tolerance_15_px(col: int, hit: bool) -> None:
    box = torch.tensor([[10.0, 10.0, 20.0, 20.0]])  # columns and rows 10..19
    assert pointing_game(peak_map(15, col), box).item() is hit  # 34 - 19 = 15 px, 35 -> 16 px
    mask = boxes_to_masks(box, (40, 40))
    assert pointing_game(peak_map(15, col), mask).item() is hit


def test_pointing_game_diagonal_distance_is_euclidean() -> None:
    box = torch.tensor([[10.0, 10.0, 20.0, 20.0]])
    assert pointing_game(peak_map(19 + 9, 19 + 12), box).item()  # sqrt(81 + 144) = 15
    assert not pointing_game(peak_map(19 + 10, 19 + 12), box).item()  # sqrt(244) > 15


def test_pointing_game_upsamples_a_coarse_map_to_the_image() -> None:
    coarse = torch.zeros(1, 4, 4)
    coarse[0, 3, 3] = 1.0  # bottom-right cell of a 40x40 image
    assert pointing_game(coarse, torch.tensor([[30.0, 30.0, 40.0, 40.0]]), tolerance_px=0,
                         image_size=(40, 40)).item()


@pytest.mark.parametrize("box", [[0, 0, 10, 20], [5, 5, 45, 35], [0, 0, 80, 40], [3, 7, 4, 8]])
def test_share_inside_of_a_uniform_map_is_the_area_fraction(box: list[int]) -> None:
    boxes = torch.tensor([box], dtype=torch.float32)
    share = share_inside(torch.full((1, 10, 20), 0.3), boxes, image_size=(40, 80))
    area = (box[2] - box[0]) * (box[3] - box[1]) / (40 * 80)
    assert share.item() == pytest.approx(area)


def test_share_inside_of_a_map_on_the_region_is_one_and_of_zeros_nan() -> None:
    mask = torch.zeros(2, 8, 8, dtype=torch.bool)
    mask[:, 2:5, 3:6] = True
    saliency = mask.float() * torch.tensor([1.0, 0.0])[:, None, None]
    share = share_inside(saliency, mask)
    assert share[0].item() == pytest.approx(1.0) and math.isnan(share[1].item())


@pytest.mark.parametrize("sigma", [0.0, 3.0])
@pytest.mark.parametrize("box", [[10, 12, 30, 40], [40, 5, 60, 25]])
def test_box_iou_of_a_perfect_map_is_one(sigma: float, box: list[int]) -> None:
    boxes = torch.tensor([box], dtype=torch.float32)
    iou, fdr = box_iou_fdr(boxes_to_masks(boxes, (64, 64)).float(), boxes, smooth_sigma=sigma)
    assert iou.item() == pytest.approx(1.0) and fdr.item() == 0.0


def test_box_iou_and_fdr_by_hand() -> None:
    saliency = torch.zeros(1, 10, 10)
    saliency[0, 0:2, 0:5] = 1.0  # salient box (0, 0, 5, 2): 10 pixels
    gt = torch.tensor([[0.0, 0.0, 2.0, 10.0]])  # 20 pixels, 80 outside
    iou, fdr = box_iou_fdr(saliency, gt, smooth_sigma=0)
    assert iou.item() == pytest.approx(4 / (10 + 20 - 4))
    assert fdr.item() == pytest.approx(6 / 80)


def test_box_of_an_all_zero_map_is_the_whole_image() -> None:
    iou, _ = box_iou_fdr(torch.zeros(1, 8, 8), torch.tensor([[0.0, 0.0, 8.0, 8.0]]))
    assert iou.item() == pytest.approx(1.0)


@pytest.mark.parametrize("saliency, tv", [
    ([[0.0, 1.0], [0.0, 1.0]], 0.5),
    ([[0.0, 1.0], [1.0, 0.0]], 1.0),
    ([[0.3, 0.3, 0.3]], 0.0),
    ([[0.0, 0.5, 1.0]], 0.5),
])
def test_total_variation_by_hand(saliency: list[list[float]], tv: float) -> None:
    assert total_variation(torch.tensor([saliency])).item() == pytest.approx(tv)
