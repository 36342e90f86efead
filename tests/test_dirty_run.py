"""`fidoflow run` over a dirty folder: every broken kind, real photos, a link out of the root.
The run finishes, exits 0, and every manifest row ends in predictions/ or errors/."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from fixtures_archives import dirty_folder

from fidoflow.flows.cli import main
from fidoflow.storage import parts, tables
from fidoflow.storage.runfolder import RunFolder

pytestmark = pytest.mark.slow


def test_dirty_folder_runs_to_the_end_and_loses_nothing(photo_folder: Path, tmp_path: Path,
                                                        capsys) -> None:
    source = tmp_path / "dirty"
    expected = dirty_folder(source, outside=tmp_path / "outside")
    shutil.copytree(photo_folder, source / "photos")
    run = tmp_path / "run"
    code = main(["run", str(source), "--out", str(run), "--iterations", "1", "--samples", "1",
                 "--mask-size", "8", "--shard-size", "4", "--max-pixels", "20000", "--model", "synthetic-cnn",
                 "--method", "scd,cd"])
    out = capsys.readouterr().out
    assert code == 0
    assert "5 of 5 shards run, 17 images, 7 errors" in out
    # the link out of the root is a file to the listing: the worker that opens it refuses it

    manifest = pq.read_table(run / "manifest.parquet")
    assert manifest.schema.equals(tables.MANIFEST.schema)
    rows = manifest.to_pylist()
    folder = RunFolder(str(run))
    predictions = parts.read_parts(folder, tables.PREDICTIONS).to_pylist()
    errors = parts.read_parts(folder, tables.ERRORS).to_pylist()
    ids = {r["image_id"] for r in rows}
    for method in ("scd", "cd"):
        predicted = [p["image_id"] for p in predictions if p["method"] == method]
        assert len(predicted) == len(set(predicted)) == 10
        assert set(predicted).isdisjoint(e["image_id"] for e in errors)
        assert set(predicted) | {e["image_id"] for e in errors} == ids
    assert {e["path"]: e["error_type"] for e in errors} == expected
