"""--target: maps explain the top-1 class (default) or the manifest's label; recorded in run.json
and in every predictions row."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fidoflow.pipeline.analysis.explain import choose_targets


def test_labels_are_used_where_rows_have_one_and_the_prediction_elsewhere() -> None:
    rows = [{"model_label": 2}, {"model_label": None}, {"model_label": float("nan")}, {}]
    predicted = torch.tensor([5, 6, 7, 8])
    targets, sources = choose_targets(rows, predicted, "label")
    assert targets.tolist() == [2, 6, 7, 8]
    assert sources == ["label", "predicted", "predicted", "predicted"]
    targets, sources = choose_targets(rows, predicted, "predicted")
    assert targets.tolist() == [5, 6, 7, 8] and set(sources) == {"predicted"}
    with pytest.raises(ValueError, match="unknown target 'truth'"):
        choose_targets(rows, predicted, "truth")


def test_a_label_run_explains_the_label_and_records_it(tmp_path: Path) -> None:
    from fidoflow.pipeline import stages
    from fidoflow.pipeline.archive.synthetic import write_archive
    from fidoflow.pipeline.config import RunConfig
    from fidoflow.pipeline.methods import parse_methods
    from fidoflow.storage import parts, tables
    from fidoflow.storage.runfolder import RunFolder

    write_archive(tmp_path / "syn", 6, seed=0, size=48, classes=3)
    config = RunConfig(source=str(tmp_path / "syn"), root=str(tmp_path / "run"),
                       model="synthetic-cnn", methods=parse_methods("saliency,gradcam"),
                       target="label", shard_size=8, mask_size=12)
    config, shards = stages.prepare_run(config)
    for shard in range(shards):
        stages.explain_shard(config, shard)
    run = RunFolder(config.root)
    assert run.read_json("run.json")["config"]["target"] == "label"
    labels = {r["image_id"]: r["model_label"] for r in run.read_table("manifest.parquet").to_pylist()}
    rows = parts.read_parts(run, tables.PREDICTIONS).to_pylist()
    assert len(rows) == 12 and {r["target_source"] for r in rows} == {"label"}
    assert all(r["target"] == labels[r["image_id"]] for r in rows)
    assert RunConfig.from_json(config.to_json()) == config
