"""Structured attention graphs on toy classifiers whose evidence lies in two known regions of
4 patches each (a 28² input, 7 × 7 patches of 4 px): a checkerboard texture the blur wipes out."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fidoflow.pipeline.methods import parse_methods
from fidoflow.pipeline.methods.base import Attribution
from fidoflow.pipeline.methods.sag import patch_masks

SIZE, GRID = 28, 7
REGION_A = (slice(0, 8), slice(0, 8))  # patches 0, 1, 7, 8
REGION_B = (slice(16, 24), slice(20, 28))  # patches 33, 34, 40, 41
PATCHES_A, PATCHES_B = (0, 1, 7, 8), (33, 34, 40, 41)


def texture(x: torch.Tensor, region: tuple[slice, slice]) -> torch.Tensor:
    """Mean absolute difference of horizontal neighbours inside ``region``: 1 for the sharp
    checkerboard, near 0 once blurred; a region with one patch of four blurred: 0.75."""
    part = x[:, :, region[0], region[1]]
    return (part[..., 1:] - part[..., :-1]).abs().mean(dim=(1, 2, 3))


class Regions(nn.Module):
    """Class 1's logit from the texture of A and B: either one suffices (``mode="either"``,
    max) or both are needed (``"both"``, mean); class 0's logit is 0."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = texture(x, REGION_A), texture(x, REGION_B)
        logit = (20 * torch.maximum(a, b) - 15 if self.mode == "either"
                 else 40 * (a + b) / 2 - 35)
        return torch.stack([torch.zeros_like(logit), logit], dim=1)


def images(n: int) -> torch.Tensor:
    """Flat grey pictures with a checkerboard in both regions (and faint noise elsewhere)."""
    x = 0.5 + 0.02 * torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    board = (torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2
    for region in (REGION_A, REGION_B):
        x[:, :, region[0], region[1]] = board.float()
    return x


def explain(mode: str, n: int = 2, seeds: list[int] | None = None,
            entry: str = "sag") -> Attribution:
    spec = parse_methods(entry)["sag"]
    with spec.build(Regions(mode)) as method:
        return method.attribute(images(n), torch.ones(n, dtype=torch.long), seeds or list(range(n)))


def roots_of(out: Attribution, image: int) -> list[tuple[int, ...]]:
    return sorted(tuple(r["patches"]) for r in out.rows if r["image"] == image and r["root"])


def test_two_regions_that_each_suffice_are_two_roots() -> None:
    out = explain("either")
    for image in range(2):
        assert roots_of(out, image) == [PATCHES_A, PATCHES_B]
    assert out.scalars["roots"].tolist() == [2.0, 2.0]
    joint = out.maps["joint"][0]
    assert joint.shape == (GRID, GRID)
    assert (joint.view(-1)[list(PATCHES_A + PATCHES_B)] == 0.5).all()
    assert joint.sum() == 4.0  # nothing outside the roots


def test_children_drop_one_patch_and_lose_the_target() -> None:
    out = explain("either", n=1)
    roots = {r["node"]: r for r in out.rows if r["root"]}
    children = [r for r in out.rows if not r["root"]]
    assert len(children) == 8
    for child in children:
        parent = roots[child["parent"]]
        assert set(child["patches"]) < set(parent["patches"])
        assert len(child["patches"]) == len(parent["patches"]) - 1
        assert child["probability"] < 0.9 * out.scalars["clean_prob"][0] <= parent["probability"]


def test_regions_needed_together_are_one_root_holding_both() -> None:
    """Hard patch edges (``feather=0``): the toy's evidence is exactly its cells. With the
    default soft edges the ramps wear the texture at the regions' inner borders, so the root
    may add a neighbour patch or two; it still holds both regions."""
    out = explain("both", entry="sag:feather=0")
    for image in range(2):
        assert roots_of(out, image) == [tuple(sorted(PATCHES_A + PATCHES_B))]
    (root,) = roots_of(explain("both"), 0)
    assert set(PATCHES_A + PATCHES_B) <= set(root)


def test_a_set_larger_than_the_beam_reaches_is_found_by_elimination() -> None:
    """Both regions (8 patches) with the beam stopped at 6 patches: the elimination from the
    whole image still finds the one minimal set."""
    out = explain("both", entry="sag:feather=0:max_patches=6")
    for image in range(2):
        assert roots_of(out, image) == [tuple(sorted(PATCHES_A + PATCHES_B))]


def test_the_search_stops_once_enough_diverse_sets_are_found() -> None:
    """A and B both turn sufficient at level 4: asking for 2 roots ends the search there,
    asking for 3 goes on ``extra`` levels looking for a third; same two roots either way."""
    two, three = explain("either", n=1, entry="sag:roots=2"), explain("either", n=1)
    assert roots_of(two, 0) == roots_of(three, 0) == [PATCHES_A, PATCHES_B]
    assert two.scalars["forwards"][0] < three.scalars["forwards"][0]


def test_feathered_masks_ramp_across_patch_borders() -> None:
    hard = patch_masks([(0,)], GRID, (SIZE, SIZE))
    assert set(hard.unique().tolist()) == {0.0, 1.0} and hard.sum() == 16
    soft = patch_masks([(8,)], GRID, (SIZE, SIZE), feather=0.25)[0, 0]  # cell (1, 1): px 4..7
    assert soft[5:7, 5:7].min() > 0.8 and soft[5, 3] < 0.5 < soft[5, 4]  # ramp over the border
    assert soft[20:, 20:].max() < 1e-3 and abs(soft.sum() - 16) < 0.1  # local, mass kept


def test_same_seed_same_graph_whatever_the_batch() -> None:
    first, again = explain("either", n=3, seeds=[5, 6, 7]), explain("either", n=3, seeds=[5, 6, 7])
    assert first.rows == again.rows
    torch.testing.assert_close(first.maps["joint"], again.maps["joint"])
    spec = parse_methods("sag")["sag"]
    with spec.build(Regions("either")) as method:  # one image per explain call: same rows
        alone = method.attribute(images(3), torch.ones(3, dtype=torch.long), [5, 6, 7],
                                 batch_size=1)
    assert [r["image"] for r in alone.rows] == [r["image"] for r in first.rows]
    assert [r["patches"] for r in alone.rows] == [r["patches"] for r in first.rows]


def test_a_run_writes_the_graph_table_and_the_report_draws_its_roots(photo_folder, tmp_path
                                                                     ) -> None:
    """The explain stage of a real run folder (synthetic classifier, two methods): the sag part
    has the schema, one root row per root the predictions count, children pointing at roots;
    the report turns an image's rows into one picture per root."""
    import pyarrow.parquet as pq

    from fidoflow.pipeline import stages
    from fidoflow.pipeline.analysis.report import GalleryItem, gallery_html
    from fidoflow.pipeline.analysis.report_items import graph_roots
    from fidoflow.pipeline.config import RunConfig
    from fidoflow.storage import tables

    config = RunConfig(source=str(photo_folder), root=str(tmp_path / "run"), model="synthetic-cnn",
                       methods=parse_methods("rise:masks=8,sag:grid=4:max_patches=4"),
                       mask_size=8, shard_size=3, workers=1)
    config, shards = stages.prepare_run(config)
    assert shards == 1
    stages.explain_shard(config, 0)
    table = pq.read_table(tmp_path / "run" / "sag" / "part-00000.parquet")
    assert table.schema.equals(tables.SAG.schema)
    nodes = table.to_pandas()
    predictions = pq.read_table(tmp_path / "run" / "predictions").to_pandas()
    counted = {r.image_id: dict(r.scalars)["roots"] for r in predictions.itertuples()
               if r.method == "sag"}
    assert counted == {i: float(((nodes.image_id == i) & nodes.root).sum())
                       for i in ("chelsea", "coffee", "sub/rocket")}
    assert set(nodes.method) <= {"sag"} and (nodes.grid == 4).all()
    children = nodes[~nodes.root]
    for child in children.itertuples():
        parent = nodes[(nodes.image_id == child.image_id) & (nodes.node == child.parent)]
        assert parent.root.item() and len(child.patches) == len(parent.patches.item()) - 1
    image = nodes.image_id[nodes.root].iloc[0]
    roots = graph_roots(nodes[nodes.image_id == image])["sag"]
    page = gallery_html([GalleryItem(image, np.zeros((40, 40, 3), np.uint8), [], {}, {"sag": roots})])
    assert page.count("data:image/png") == len(roots) > 0 and "sag root 1" in page
