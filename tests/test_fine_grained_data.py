"""The field's own data used the field's way: CUB part locations scored per part and class,
MegaDetector detections explained as square crops of their frames (and shown back in them),
annotated boxes explained as crops (``--crop boxes``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fidoflow.pipeline.analysis.aggregate import BootstrapConfig
from fidoflow.pipeline.analysis.evaluate import EvaluateConfig
from fidoflow.pipeline.archive.readers import read_archive
from fidoflow.pipeline.archive.stream import open_manifest
from fidoflow.pipeline.archive.synthetic import write_camera_traps, write_cub_tree
from fidoflow.pipeline.config import AnalysisConfig, RunConfig
from fidoflow.pipeline.imaging.views import crop_region
from fidoflow.pipeline.methods import parse_methods
from fidoflow.pipeline.metrics.parts import part_shares
from fidoflow.storage import masks, parts, tables
from fidoflow.storage.runfolder import RunFolder

TINY = AnalysisConfig(evaluate=EvaluateConfig(steps=4), bootstrap=BootstrapConfig(resamples=100),
                      gallery=3, flips=1)


def run_stages(config: RunConfig, analysis: AnalysisConfig = TINY) -> RunFolder:
    from fidoflow.pipeline.stages import run_in_process

    return run_in_process(config, analysis)


def test_part_shares_find_the_part_under_the_peak() -> None:
    saliency = torch.zeros(40, 40)
    saliency[10, 30] = 1.0
    saliency[30, 5] = 0.5
    found = [{"name": "beak", "x": 30.0, "y": 11.0}, {"name": "tail", "x": 5.0, "y": 30.0},
             {"name": "belly", "x": 20.0, "y": 20.0}]
    shares, nearest, hit = part_shares(saliency, found, radius=3.0)
    assert shares == pytest.approx([2 / 3, 1 / 3, 0.0]) and nearest == 0 and hit
    _, nearest, hit = part_shares(saliency, found[1:], radius=3.0)
    assert nearest == 1 and not hit  # the peak is 14 px from the belly, outside its disc


@pytest.fixture(scope="module")
def cub_run(tmp_path_factory: pytest.TempPathFactory) -> RunFolder:
    """16 birds as a CUB tree (parts where the generator drew them), explained on their box
    crops by SCD and Grad-CAM with the synthetic CNN, whose classes differ by the wing patch."""
    tmp = tmp_path_factory.mktemp("cub")
    tree = write_cub_tree(tmp / "CUB_200_2011", 16, seed=4, size=160, small_objects=True)
    config = RunConfig(source=str(tree), root=str(tmp / "run"), model="synthetic-cnn",
                       methods=parse_methods("scd:iterations=12,gradcam"), mask_size=16,
                       shard_size=8, task_size=8, batch_size=8, workers=1, crop="boxes")
    return run_stages(config)


def test_the_parts_table_puts_scd_on_the_discriminative_part(cub_run: RunFolder) -> None:
    table = parts.read_parts(cub_run, tables.PARTS).to_pandas()
    assert set(table["part"]) == {"beak", "belly", "crown", "left eye", "left leg", "left wing",
                                  "tail"}
    assert table.groupby(["image_id", "method"]).size().eq(7).all()  # every part visible
    mean = table[table.method == "scd"].groupby("part")["share"].mean()
    assert mean.idxmax() == "left wing", mean.to_dict()


def test_the_summary_and_report_hold_the_class_by_part_table(cub_run: RunFolder) -> None:
    summary = pd.read_parquet(Path(cub_run.root) / "summary.parquet")
    rows = summary[(summary.section == "parts") & (summary.group_by == "class")]
    assert set(rows.method) == {"scd", "gradcam"} and "left wing" in set(rows.statistic)
    wing = rows[(rows.method == "scd") & (rows.statistic == "left wing")]
    assert len(wing) == 8 and (wing.ci_low <= wing.value).all() and (wing.n == 2).all()
    html = (Path(cub_run.root) / "report.html").read_text()
    assert "Parts: where each method" in html and "left wing" in html


def test_the_crops_of_cub_boxes_are_recorded_in_the_mask_store(cub_run: RunFolder) -> None:
    boxes = masks.read_crops(cub_run.masks_url)
    manifest = cub_run.read_table(tables.MANIFEST.path).to_pylist()
    for row, box in zip(manifest, boxes, strict=True):
        expected = crop_region(row, (160, 160))
        np.testing.assert_allclose(box, expected, atol=1e-3)
        assert box[2] - box[0] == pytest.approx(box[3] - box[1])  # a square


def test_megadetector_output_becomes_one_row_per_detection(tmp_path: Path) -> None:
    root = write_camera_traps(tmp_path / "traps", frames=4, seed=2)
    rows = read_archive(root / "md.json")
    assert rows["image_id"].tolist() == ["frames/0000#0", "frames/0001#0", "frames/0001#1",
                                         "frames/0002#0", "frames/0003#0", "frames/0003#1",
                                         "frames/missing"]
    assert rows["manifest_error"].fillna("").tolist() == [""] * 6 + ["DetectorFailure"]
    assert (rows["crop_units"][:6] == "fraction").all() and rows["label_name"][0] == "animal"
    truth = pd.read_parquet(root / "truth.parquet")
    for (_, row), (_, bird) in zip(rows[:6].iterrows(), truth.iterrows(), strict=True):
        width = 192 * (1 + int(row["path"][-5]) % 2)
        assert row["crop_x0"] * width == pytest.approx(bird.box_x0, abs=1e-3)
        assert row["crop_y1"] * 192 == pytest.approx(bird.box_y1, abs=1e-3)
    stream = open_manifest(root / "md.json", None, "all", None, ["animal"])
    assert stream.counts == {"empty_frames": 1} and stream.rows == 7
    stream.close()
    wider = open_manifest(root / "md.json", None, "all", None, ["animal"],
                          options={"detection_threshold": 0.05,
                                   "detection_categories": "animal,person"})
    assert wider.rows == 7 + 4 * 2  # the low-confidence animal and the person of each frame
    wider.close()


def test_a_megadetector_run_explains_crops_and_shows_them_in_their_frames(tmp_path: Path) -> None:
    root = write_camera_traps(tmp_path / "traps", frames=4, seed=2)
    config = RunConfig(source=str(root / "md.json"), root=str(tmp_path / "run"),
                       model="synthetic-cnn", methods=parse_methods("scd:iterations=3:samples=2"),
                       mask_size=8, shard_size=4, task_size=4, batch_size=4, workers=1)
    run = run_stages(config)
    predictions = parts.read_parts(run, tables.PREDICTIONS).to_pandas()
    assert sorted(predictions.image_id) == sorted(
        ["frames/0000#0", "frames/0001#0", "frames/0001#1", "frames/0002#0", "frames/0003#0",
         "frames/0003#1"])
    errors = parts.read_errors(run).to_pandas()
    assert errors[["image_id", "stage", "error_type"]].values.tolist() == [
        ["frames/missing", "manifest", "DetectorFailure"]]
    assert run.read_json("run.json")["archive"] == {"empty_frames": 1}
    boxes = masks.read_crops(run.masks_url)[:6]
    assert not np.isnan(boxes).any() and np.allclose(boxes[:, 2] - boxes[:, 0],
                                                     boxes[:, 3] - boxes[:, 1])
    images = parts.read_parts(run, tables.IMAGES).to_pandas()
    assert set(zip(images.width, images.height)) == {(192, 192), (384, 192)}  # whole frames
    html = (Path(run.root) / "report.html").read_text()
    assert "Detections back in their frames" in html and "frames/0001.png" in html
