"""The synthetic benchmark's promises: deterministic, classes differ only in the ground truth
region, that region is small, and the committed classifier solves it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from fidoflow.pipeline.archive.synthetic import (
    CLASS_NAMES,
    make_dataset,
    make_scene,
    write_archive,
    write_cub_tree,
)
from fidoflow.pipeline.metrics.box import boxes_to_masks
from fidoflow.pipeline.models.synthetic_cnn import WEIGHTS, load_synthetic_classifier


def test_same_seed_same_scenes_and_longer_sets_extend_shorter_ones() -> None:
    a, b = make_dataset(6, seed=11), make_dataset(6, seed=11)
    for field in ("images", "labels", "part_masks", "part_boxes", "object_boxes"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    assert torch.equal(make_dataset(3, seed=11).images, a.images[:3])
    assert not torch.equal(make_dataset(3, seed=12).images, a.images[:3])
    assert torch.equal(make_scene(5, 2).image, make_scene(np.random.default_rng(5), 2).image)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("small", [False, True])
def test_labels_change_pixels_only_inside_the_ground_truth_region(seed: int, small: bool) -> None:
    size = 160 if small else 96
    scenes = [make_scene(seed, label, size=size, small_objects=small)
              for label in range(len(CLASS_NAMES))]
    mask = scenes[0].part_mask
    for other in scenes[1:]:
        assert torch.equal(other.part_mask, mask)
        assert torch.equal(other.object_box, scenes[0].object_box)
        changed = (other.image != scenes[0].image).any(dim=0)
        assert changed.any() and not (changed & ~mask).any()


def test_region_is_small_boxed_and_on_the_bird() -> None:
    data = make_dataset(48, seed=3)
    fraction = data.part_masks.float().mean(dim=(1, 2))
    assert 0.005 < fraction.min() and fraction.max() < 0.03
    assert torch.equal(boxes_to_masks(data.part_boxes, (96, 96)) & data.part_masks,
                       data.part_masks)  # the box holds the whole region ...
    for m, (x0, y0, x1, y1) in zip(data.part_masks, data.part_boxes.long(), strict=True):
        assert m[y0].any() and m[y1 - 1].any() and m[:, x0].any() and m[:, x1 - 1].any()  # tight
    inside = (data.part_boxes[:, :2] >= data.object_boxes[:, :2]).all(1) & (
        data.part_boxes[:, 2:] <= data.object_boxes[:, 2:]).all(1)
    assert inside.all()
    assert data.images.min() >= 0 and data.images.max() <= 1
    assert torch.equal(data.labels, torch.arange(48) % 8)


def test_small_objects_cover_a_small_fraction_of_a_large_scene() -> None:
    data = make_dataset(4, seed=0, size=224, small_objects=True)
    assert data.images.shape == (4, 3, 224, 224)
    assert data.part_masks.float().mean() < 0.006


def test_archive_on_disk(tmp_path) -> None:
    root = write_archive(tmp_path / "birds", n=9, seed=4, size=64)
    table = pd.read_csv(root / "ground_truth.csv")
    data = make_dataset(9, seed=4, size=64)
    assert list(table.label) == data.labels.tolist()
    np.testing.assert_array_equal(table[["x0", "y0", "x1", "y1"]].to_numpy(), data.part_boxes)
    stored = np.load(root / "part_masks.npz")
    assert list(stored["image_id"]) == list(table.image_id)
    np.testing.assert_array_equal(stored["masks"], data.part_masks.numpy())
    first = np.asarray(Image.open(root / table.path[0]), dtype=np.float32) / 255
    expected = data.images[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(first, expected, atol=0.5 / 255 + 1e-6)
    assert table.path[0].startswith(f"{CLASS_NAMES[0]}/")


def test_the_cub_tree_gives_every_class_training_and_test_images(tmp_path: Path) -> None:
    """An even number of classes must not fall into one split each (labels and the split
    alternating in step)."""
    tree = write_cub_tree(tmp_path / "cub", 16, seed=1, size=32, classes=4)
    read = {name: dict(line.split() for line in (tree / name).read_text().splitlines())
            for name in ("image_class_labels.txt", "train_test_split.txt")}
    pairs = {(read["image_class_labels.txt"][i], read["train_test_split.txt"][i])
             for i in read["image_class_labels.txt"]}
    assert pairs == {(str(c), s) for c in range(1, 5) for s in ("0", "1")}


def test_committed_classifier_solves_a_fresh_set() -> None:
    assert (Path(__file__).parents[1] / "pipeline" / "data" / WEIGHTS).stat().st_size < 5e6
    model, names = load_synthetic_classifier()
    assert not model.training and names == CLASS_NAMES[:8]
    assert model.gradcam_layer in dict(model.named_modules())
    data = make_dataset(320, seed=2024)
    with torch.no_grad():
        accuracy = (model(data.images).argmax(1) == data.labels).float().mean().item()
        grey = torch.where(data.part_masks[:, None], 0.5, data.images)
        without_part = (model(grey).argmax(1) == data.labels).float().mean().item()
    print(f"accuracy on 320 fresh scenes {accuracy:.3f}, patch greyed {without_part:.3f}")
    assert accuracy >= 0.9
    assert without_part < 0.3  # chance is 1/8: the classifier needs the patch


def test_fine_classes_differ_by_wing_patch_and_crown_only() -> None:
    from fidoflow.pipeline.archive.synthetic import CROWN, FINE_CLASS_NAMES, WING

    assert len(FINE_CLASS_NAMES) == 24
    scenes = [make_scene(7, label, fine=True) for label in range(len(FINE_CLASS_NAMES))]
    ids = scenes[0].part_ids
    assert set(ids.unique().tolist()) == {0, WING, CROWN}
    assert 0.002 < (ids == CROWN).float().mean() < 0.01
    for other in scenes[1:]:
        assert torch.equal(other.part_ids, ids) and torch.equal(other.part_mask, ids > 0)
        changed = (other.image != scenes[0].image).any(dim=0)
        assert changed.any() and not (changed & (ids == 0)).any()
    # labels 0 and 1 share the wing patch: only the crown differs
    changed = (scenes[1].image != scenes[0].image).any(dim=0)
    assert not (changed & (ids != CROWN)).any()
    # the crown draws nothing from the random stream: a fine scene is the default scene of its
    # wing patch plus a crown, so the default scenes (and the committed classifier) are unchanged
    plain = make_scene(7, 1)  # fine label 2 = wing class 1 with the first crown
    changed = (scenes[2].image != plain.image).any(dim=0)
    assert changed.any() and not (changed & (ids != CROWN)).any()
    data = make_dataset(6, seed=1, classes=16, fine=True)
    assert data.class_names == FINE_CLASS_NAMES[:16] and data.part_ids.shape == (6, 96, 96)


def test_three_part_classes_are_the_fine_scenes_with_a_coloured_tail_tip() -> None:
    from fidoflow.pipeline.archive.synthetic import (
        CROWN,
        FINE_CLASS_NAMES,
        TAIL,
        TAIL_CLASS_NAMES,
        WING,
    )

    assert len(TAIL_CLASS_NAMES) == 2 * len(FINE_CLASS_NAMES)
    scenes = [make_scene(7, label, tail=True) for label in range(len(TAIL_CLASS_NAMES))]
    ids = scenes[0].part_ids
    assert set(ids.unique().tolist()) == {0, WING, CROWN, TAIL}
    assert 0.002 < (ids == TAIL).float().mean() < 0.01
    # labels 0 and 1 share the wing patch and the crown: only the tip differs
    changed = (scenes[1].image != scenes[0].image).any(dim=0)
    assert changed.any() and not (changed & (ids != TAIL)).any()
    # the tip draws nothing from the random stream: each is its fine scene plus the tip
    for label in (0, 3, 17):
        fine = make_scene(7, label // 2, fine=True)
        changed = (scenes[label].image != fine.image).any(dim=0)
        assert changed.any() and not (changed & (ids != TAIL)).any()
        assert torch.equal(torch.where(ids == TAIL, 0, ids), fine.part_ids)
    data = make_dataset(6, seed=1, classes=30, tail=True)
    assert data.class_names == TAIL_CLASS_NAMES[:30] and data.part_ids.shape == (6, 96, 96)
