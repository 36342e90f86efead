"""The nightly run into the same folder (issue 32): a rerun lists the archive again, explains
exactly the images added since, records the ones that left (their rows and maps kept) and says
what each increment brought; through the CLI, a real Prefect server and Dask workers."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest
import xarray as xr
from PIL import Image

from fidoflow.flows.cli import main
from fidoflow.storage import parts, tables
from fidoflow.storage.runfolder import RunFolder

pytestmark = pytest.mark.slow

FAST = ["--iterations", "2", "--samples", "1", "--mask-size", "8", "--shard-size", "2",
        "--method", "saliency", "--model", "synthetic-cnn", "--explain-only"]


def photo(path: Path, seed: int, size: tuple[int, int] = (80, 64)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), np.uint8)
    Image.fromarray(pixels).save(path)


def rows(run: Path, table: tables.Table) -> list[dict]:
    return parts.read_parts(RunFolder(str(run)), table).to_pylist()


def manifest(run: Path) -> list[dict]:
    return pq.read_table(run / "manifest.parquet").to_pylist()


def increments(run: Path) -> list[dict]:
    return duckdb.sql(f"SELECT * FROM '{run}/increments/*.parquet' ORDER BY increment").df() \
        .to_dict("records")


def once_each(run: Path, method: str = "saliency") -> list[str]:
    """Every image of the manifest with exactly one prediction row and a stored map."""
    ids = [r["image_id"] for r in manifest(run)]
    predicted = [r["image_id"] for r in rows(run, tables.PREDICTIONS)]
    assert sorted(predicted) == sorted(ids), "each image predicted once"
    maps = xr.open_zarr(run / "masks.zarr", group=method, consolidated=False)
    stored = dict(zip(maps.image_id.values.tolist(), range(maps.sizes["image"]), strict=True))
    for image_id in ids:
        assert not np.isnan(maps.joint[stored[image_id]].values).any(), image_id
    return ids


def test_each_night_explains_what_arrived_and_keeps_what_left(photo_folder: Path,
                                                             tmp_path: Path, capsys) -> None:
    archive, run = photo_folder, tmp_path / "run"
    photo(archive / "a" / "x.png", 1)
    assert main(["run", str(archive), "--out", str(run), *FAST]) == 0
    out = capsys.readouterr().out
    assert "increment 1: 4 images listed" in out and "2 of 2 shards run, 4 images" in out

    photo(archive / "b" / "x.png", 2)  # the same file name in another folder
    photo(archive / "new.png", 3)
    photo(archive / "newer.png", 4)
    assert main(["run", str(archive), "--out", str(run), *FAST]) == 0
    out = capsys.readouterr().out
    assert "increment 2: 3 new images, 0 changed, 0 removed, 0 back" in out
    assert "2 of 4 shards run, 3 images, 0 errors" in out
    ids = once_each(run)
    assert {"a/x", "b/x", "new", "newer"} <= set(ids) and len(ids) == 7
    stamped = {r["image_id"]: r["increment"] for r in rows(run, tables.PREDICTIONS)}
    assert {i for i, n in stamped.items() if n == 2} == {"b/x", "new", "newer"}
    assert [r["shard"] for r in manifest(run)] == [0, 0, 1, 1, 2, 2, 3]  # appended, none moved
    last_night = duckdb.sql(
        f"SELECT p.image_id FROM '{run}/predictions/*.parquet' p WHERE p.increment = "
        f"(SELECT max(increment) FROM '{run}/increments/*.parquet') ORDER BY 1").fetchall()
    assert [r[0] for r in last_night] == ["b/x", "new", "newer"]

    before = {r["image_id"]: r for r in rows(run, tables.PREDICTIONS)}
    (archive / "coffee.jpg").unlink()  # moved to cold storage
    photo(archive / "new.png", 5, (90, 70))  # replaced by another file of the same name
    assert main(["run", str(archive), "--out", str(run), *FAST]) == 0
    out = capsys.readouterr().out
    assert "increment 3: 0 new images, 1 changed, 1 removed, 0 back" in out
    assert "1 of 4 shards run, 2 images" in out  # new.png's shard, with b/x.png
    after = {r["image_id"]: r for r in rows(run, tables.PREDICTIONS)}
    assert after["coffee"] == before["coffee"]  # its explanation stays
    assert [after[i]["increment"] for i in ("b/x", "new", "newer")] == [3, 3, 2]
    once_each(run)
    removed = pq.read_table(run / "removed.parquet").to_pylist()
    assert [(r["image_id"], r["removed_in"]) for r in removed] == [("coffee", 3)]
    assert removed[0]["last_seen"] == increments(run)[1]["started"]

    photo(archive / "coffee.jpg", 6)  # back, as another file: its shard is redone
    assert main(["run", str(archive), "--out", str(run), *FAST]) == 0
    assert "increment 4: 0 new images, 1 changed, 0 removed, 1 back" in capsys.readouterr().out
    assert pq.read_table(run / "removed.parquet").num_rows == 0
    history = increments(run)
    assert [h["increment"] for h in history] == [1, 2, 3, 4]
    assert [h["images_new"] for h in history] == [4, 3, 0, 0]
    assert all(h["ended"] is not None and h["code_version"] for h in history)
    assert [h["images_explained"] for h in history] == [4, 3, 2, 2]


def test_an_archive_that_shrank_to_nothing_flags_every_row_and_loses_none(
        photo_folder: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    assert main(["run", str(photo_folder), "--out", str(run), *FAST]) == 0
    capsys.readouterr()
    for child in photo_folder.iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()
    assert main(["run", str(photo_folder), "--out", str(run), *FAST]) == 0
    out = capsys.readouterr().out.splitlines()
    said = [line for line in out if line.startswith("increment 2")]
    assert said == [("increment 2: 0 new images, 0 changed, 3 removed, 0 back; the archive "
                     "lists no image now: every row is flagged removed, none deleted")]
    assert pq.read_table(run / "removed.parquet").num_rows == 3
    once_each(run)


def test_an_archive_that_is_gone_is_one_line_and_changes_nothing(
        photo_folder: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    assert main(["run", str(photo_folder), "--out", str(run), *FAST]) == 0
    capsys.readouterr()
    files = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    shutil.rmtree(photo_folder)
    assert main(["run", str(photo_folder), "--out", str(run), *FAST]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "source folder not found" in err[0]
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == files


def test_a_night_with_nothing_new_starts_no_cluster(photo_folder: Path, tmp_path: Path,
                                                   capsys, monkeypatch) -> None:
    """Nothing new, changed or pending: no Dask cluster (the flow's tasks run in its own
    process), the increment still recorded; an image added the next night starts one again."""
    from fidoflow.flows import cli, explain_archive

    run, started, runners = tmp_path / "run", [], []
    prestart, build_runner = cli.prestart, explain_archive.build_runner
    monkeypatch.setattr(cli, "prestart", lambda *a, **k: started.append(1) or prestart(*a, **k))
    monkeypatch.setattr(explain_archive, "build_runner",
                        lambda plan: runners.append(plan.kind) or build_runner(plan))
    assert main(["run", str(photo_folder), "--out", str(run), *FAST]) == 0
    assert main(["run", str(photo_folder), "--out", str(run), *FAST]) == 0
    out = capsys.readouterr().out
    assert "increment 2: 0 new images, 0 changed, 0 removed, 0 back" in out
    assert "0 of 2 shards run" in out
    assert (started, runners) == ([1], ["address", "threads"])
    photo(photo_folder / "new.png", 3)
    assert main(["run", str(photo_folder), "--out", str(run), *FAST]) == 0
    assert "increment 3: 1 new images" in capsys.readouterr().out
    assert (started, runners) == ([1, 1], ["address", "threads", "address"])
    assert [h["images_new"] for h in increments(run)] == [3, 0, 1]
    assert len(once_each(run)) == 4


SLOW = ["--iterations", "60", "--samples", "4", "--mask-size", "8", "--shard-size", "1",
        "--method", "scd", "--model", "synthetic-cnn", "--explain-only", "--workers", "1"]


def test_an_increment_killed_midway_is_finished_by_the_rerun(photo_folder: Path,
                                                            tmp_path: Path) -> None:
    run = tmp_path / "run"
    cli = [sys.executable, "-m", "fidoflow.flows.cli", "run", str(photo_folder), "--out",
           str(run), *SLOW]
    env = dict(os.environ)
    assert subprocess.run(cli, env=env, capture_output=True, timeout=300,
                          check=False).returncode == 0
    for k in range(6):
        photo(photo_folder / "later" / f"{k}.png", 10 + k)
    started = subprocess.Popen(cli, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:  # kill once part of the increment is done
            done = parts.done_shards(RunFolder(str(run)), tables.PREDICTIONS)
            if len(done) > 3:
                break
            time.sleep(0.2)
        assert 3 < len(done) < 9, done
    finally:
        os.killpg(started.pid, signal.SIGKILL)
        started.wait()
    finished = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=300,
                              check=False)
    assert finished.returncode == 0, finished.stderr
    assert "0 new images" in finished.stdout
    assert len(once_each(run, "scd")) == 9


def test_the_analysis_covers_the_archive_and_reports_the_last_increment(tmp_path: Path,
                                                                        capsys) -> None:
    from fidoflow.pipeline.archive.synthetic import write_archive

    archive = write_archive(tmp_path / "birds", n=6, seed=5, size=96, small_objects=True)
    (archive / "ground_truth.csv").unlink()
    run = tmp_path / "run"
    analysing = [a for a in FAST if a != "--explain-only"]
    assert main(["run", str(archive), "--out", str(run), *analysing]) == 0
    more = write_archive(tmp_path / "more", n=4, seed=9, size=96, small_objects=True)
    for image in sorted(more.glob("*/*.png")):
        shutil.copy(image, archive / image.parent.name / f"later-{image.name}")
    assert main(["run", str(archive), "--out", str(run), *analysing]) == 0
    capsys.readouterr()
    summary = pq.read_table(run / "summary.parquet").to_pandas()
    per_run = summary[(summary.section == "run") & (summary.group_by == "increment")]
    assert per_run[per_run.statistic == "images"].set_index("group_value")["value"].to_dict() \
        == {"1": 6.0, "2": 4.0}
    top1 = summary[(summary.section == "accuracy") & (summary.group_by == "increment")
                   & (summary.statistic == "top1") & (summary.method == "none")]
    assert set(top1.group_value) == {"1", "2"} and (top1.n == [6, 4]).all()
    report = (run / "report.html").read_text()
    assert "Last increment (run 2 of this folder)" in report and "4 images arrived" in report

    gone = min(archive.glob("*/later-*.png"))
    gone.unlink()
    assert main(["run", str(archive), "--out", str(run), *analysing]) == 0
    summary = pq.read_table(run / "summary.parquet").to_pandas()
    images = summary[(summary.section == "run") & (summary.statistic == "images")
                     & (summary.group_by == "overall")]["value"]
    assert images.tolist() == [9.0]  # the removed image is left out of the summary
    assert "1 image the archive no longer lists left out" in (run / "report.html").read_text()
    assert len(rows(run, tables.PREDICTIONS)) == 10  # and keeps its rows


def test_a_new_version_of_a_manifest_file_adds_and_drops_rows(photo_folder: Path, tmp_path: Path,
                                                              capsys) -> None:
    """A CSV manifest's new version: its rows follow the folder's rules, ids as the file gives."""
    listing = photo_folder / "manifest.csv"
    listing.write_text("image_id,path\nc1,chelsea.png\nc2,coffee.jpg\n")
    run = tmp_path / "run"
    assert main(["run", str(listing), "--out", str(run), *FAST]) == 0
    listing.write_text("image_id,path\nc2,coffee.jpg\nr3,sub/rocket.png\n")
    assert main(["run", str(listing), "--out", str(run), *FAST]) == 0
    assert "increment 2: 1 new images, 0 changed, 1 removed, 0 back" in capsys.readouterr().out
    assert [r["image_id"] for r in manifest(run)] == ["c1", "c2", "r3"]
    assert pq.read_table(run / "removed.parquet")["image_id"].to_pylist() == ["c1"]
    once_each(run)
