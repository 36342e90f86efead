"""The explain-archive flow end to end: CLI → Prefect server → Dask workers → run folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import xarray as xr
import zarr

from fidoflow.flows.cli import main
from fidoflow.storage import parts, tables
from fidoflow.storage.runfolder import SCHEMA_VERSION, RunFolder

pytestmark = pytest.mark.slow

# The small synthetic classifier keeps three flow runs cheap; test_analysis_flow.py runs the
# embedded EfficientNet-Lite0 end to end.
FAST = ["--iterations", "2", "--samples", "1", "--mask-size", "8", "--shard-size", "2",
        "--method", "scd,cd", "--model", "synthetic-cnn", "--explain-only"]


def parts_of(run: Path, stage: str) -> list[Path]:
    return sorted((run / stage).glob("part-*.parquet"))


def rows_of(run: Path, table: tables.Table) -> list[dict]:
    return parts.read_parts(RunFolder(str(run)), table).to_pylist()


def test_run_writes_every_file_with_its_schema_and_resumes(photo_folder: Path, tmp_path: Path,
                                                           capsys) -> None:
    run = tmp_path / "run"
    assert main(["run", str(photo_folder), "--out", str(run), *FAST]) == 0
    assert "2 of 2 shards run, 3 images, 0 errors" in capsys.readouterr().out

    info = json.loads((run / "run.json").read_text())
    assert info["model"]["name"] == "synthetic-cnn" and len(info["model"]["sha256"]) == 64
    assert info["config"]["methods"]["scd"]["config"]["iterations"] == 2 and info["seed"] == 0
    assert info["config"]["target"] == "predicted"

    manifest = pq.read_table(run / "manifest.parquet")
    assert manifest.schema.equals(tables.MANIFEST.schema)
    assert manifest.column("path").to_pylist() == ["chelsea.png", "coffee.jpg", "sub/rocket.png"]
    assert manifest.column("shard").to_pylist() == [0, 0, 1]
    assert [r["width"] for r in rows_of(run, tables.IMAGES)] == [96, 96, 96]

    # two tasks of one shard each, merged into one part when the run ended
    (compacted,) = parts_of(run, "predictions")
    assert compacted.name == "part-00000-00001.parquet"
    assert pq.read_table(compacted).schema.equals(tables.PREDICTIONS.schema)
    rows = rows_of(run, tables.PREDICTIONS)
    assert sorted((r["image_id"], r["method"]) for r in rows) == sorted(
        (i, m) for i in ("chelsea", "coffee", "sub/rocket") for m in ("scd", "cd"))
    assert all(len(r["top5"]) == 5 and 0 <= dict(r["scalars"])["p_ssr"] <= 1 for r in rows)
    assert {r["target_source"] for r in rows} == {"predicted"}
    assert {(r["method"], r["kind"]) for r in rows} == {("scd", "scd"), ("cd", "cd")}
    assert not (run / "reclassify").exists() and not (run / "report.html").exists()  # explain-only
    assert parts_of(run, "errors") == []  # no image failed: no empty part

    store = zarr.open_group(str(run / "masks.zarr"), mode="r")
    assert list(store["image_id"][:]) == ["chelsea", "coffee", "sub/rocket"]
    for method in ("scd", "cd"):
        for name in ("joint", "ssr", "sdr"):
            array = store[method][name]
            assert array.shape == (3, 8, 8) and array.dtype == np.float16 and array.chunks == (2, 8, 8)
            assert array.metadata.dimension_names == ("image", "y", "x")
            values = array[:]
            assert not np.isnan(values).any() and values.min() >= 0 and values.max() <= 1
    first_masks = store["scd"]["joint"][:]
    labelled = xr.open_zarr(run / "masks.zarr", group="scd", consolidated=False)
    assert labelled.joint.dims == ("image", "y", "x")
    assert list(labelled.image_id.values) == ["chelsea", "coffee", "sub/rocket"]
    picked = labelled.joint.set_xindex("image_id").sel(image_id="coffee").values
    np.testing.assert_array_equal(picked, first_masks[1])

    # A rerun skips completed shards; a shard whose part is missing is redone identically.
    assert main(["run", str(photo_folder), "--out", str(run), *FAST]) == 0
    assert "0 of 2 shards run" in capsys.readouterr().out
    lose_shard(run, "predictions", 1)
    assert main(["run", str(photo_folder), "--out", str(run), *FAST, "--workers", "1"]) == 0
    assert "1 of 2 shards run, 1 images" in capsys.readouterr().out
    # One worker gets two torch threads instead of one: float sums may round differently.
    np.testing.assert_allclose(zarr.open_group(str(run / "masks.zarr"))["scd"]["joint"][:],
                               first_masks, atol=2e-3)


def lose_shard(run: Path, folder: str, shard: int) -> None:
    """As if the run had died before ``shard`` was done: the compacted part holds the others."""
    (compacted,) = parts_of(run, folder)
    kept = pq.read_table(compacted).filter(pc.field("shard") != shard)
    compacted.unlink()
    pq.write_table(kept, run / folder / parts.part_name(0))


def test_rerun_with_other_settings_is_refused(photo_folder: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    (run).mkdir()
    (run / "run.json").write_text(json.dumps({"schema_version": SCHEMA_VERSION,
                                              "config": {"source": "elsewhere"}}))
    assert main(["run", str(photo_folder), "--out", str(run), *FAST]) == 1
    assert "holds a run with other settings" in capsys.readouterr().err


def test_rerun_into_a_folder_of_an_older_layout_is_refused(photo_folder: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    (run).mkdir()
    (run / "run.json").write_text(json.dumps({"schema_version": 1, "config": {}}))
    assert main(["run", str(photo_folder), "--out", str(run), *FAST]) == 1
    assert f"written with table schema 1, this fidoflow writes {SCHEMA_VERSION}" in capsys.readouterr().err


def test_missing_folder_and_unknown_option_fail_with_one_line(tmp_path: Path, capsys) -> None:
    assert main(["run", str(tmp_path / "nope"), "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fidoflow: error: source folder not found" in err[0]
    with pytest.raises(SystemExit) as unknown:
        main(["run", str(tmp_path), "--out", str(tmp_path / "run"), "--frobnicate"])
    assert unknown.value.code == 2
    assert "unrecognized arguments: --frobnicate" in capsys.readouterr().err


def test_prefect_api_runs_the_callers_start_up_once_whichever_api(monkeypatch) -> None:
    from fidoflow.flows.server import prefect_api

    calls = []
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:1/api")
    with prefect_api(meanwhile=lambda: calls.append("imported")) as url:
        assert url == "http://127.0.0.1:1/api"
    assert calls == ["imported"]
