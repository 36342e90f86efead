"""Run folders on fsspec URLs: file://, memory:// (one process, threads) and an S3-compatible
store (a real moto server on loopback), each holding every file a local run holds."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import fsspec
import numpy as np
import pytest
import zarr

from fidoflow.flows.cli import main
from tests.ports import reserved_port

pytestmark = pytest.mark.slow

FAST = ["--iterations", "2", "--samples", "1", "--mask-size", "8", "--shard-size", "2",
        "--model", "synthetic-cnn", "--workers", "1"]
EVERY_FILE = ("run.json", "manifest.parquet", "masks.zarr/zarr.json", "summary.parquet",
              "report.html", "predictions/part-00000-00001.parquet",
              "metrics/part-00000-00001.parquet", "reclassify/part-00000-00001.parquet")


def assert_complete(fs: fsspec.AbstractFileSystem, root: str, masks_url: str) -> None:
    for name in EVERY_FILE:
        assert fs.exists(f"{root}/{name}"), name
    assert not fs.exists(f"{root}/.lock")
    assert not [p for p in fs.find(root) if p.rsplit("/", 1)[-1].endswith(".tmp")]
    joint = zarr.open_group(masks_url, mode="r")["scd"]["joint"][:]
    assert joint.shape == (3, 8, 8) and not np.isnan(joint).any()


def test_file_url(photo_folder: Path, tmp_path: Path) -> None:
    assert main(["run", str(photo_folder), "--out", f"file://{tmp_path}/run", *FAST]) == 0
    assert_complete(fsspec.filesystem("file"), f"{tmp_path}/run",
                    str(tmp_path / "run/masks.zarr"))


def test_memory_url_runs_in_one_process(photo_folder: Path) -> None:
    assert main(["run", str(photo_folder), "--out", "memory://fidoflow-test/run", *FAST]) == 0
    assert_complete(fsspec.filesystem("memory"), "/fidoflow-test/run",
                    "memory://fidoflow-test/run/masks.zarr")


def answers(url: str, server: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, "moto server exited"
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"no S3 stand-in at {url}")


def s3_at(url: str) -> fsspec.AbstractFileSystem:
    """The S3 filesystem of endpoint ``url`` for this process and the runs it starts: the
    instances fsspec cached for another endpoint (they do not read the environment again)
    dropped."""
    os.environ["AWS_ENDPOINT_URL"] = url
    fsspec.filesystem("s3").clear_instance_cache()
    return fsspec.filesystem("s3")


@pytest.fixture
def s3_endpoint(monkeypatch, tmp_path: Path) -> str:
    with reserved_port() as port:
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen([sys.executable, "-c", "from moto.server import main; main()",
                                   "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        answers(url, server)
    try:
        for key, value in {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "test",
                           "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"
                           }.items():
            monkeypatch.setenv(key, value)
        s3_at(url).mkdir("fidoflow-runs")
        yield url
    finally:
        server.terminate()
        server.wait(15)


def test_s3_compatible_store(photo_folder: Path, s3_endpoint: str) -> None:
    assert main(["run", str(photo_folder), "--out", "s3://fidoflow-runs/run", *FAST]) == 0
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    assert_complete(fs, "fidoflow-runs/run", "s3://fidoflow-runs/run/masks.zarr")
    assert main(["run", str(photo_folder), "--out", "s3://fidoflow-runs/run", *FAST]) == 0
    assert os.environ["AWS_ENDPOINT_URL"] == s3_endpoint


@pytest.mark.parametrize("every", [7, 3])
def test_a_store_that_fails_some_writes_loses_nothing(photo_folder: Path, s3_endpoint: str,
                                                      every: int) -> None:
    """Every ``every``-th write answered 500, half of them after the store wrote it: the
    writes are retried, and the run folder is whole, each image's rows once."""
    from tests.flaky_store import Faults, flaky_endpoint

    faults = Faults(every)
    with flaky_endpoint(s3_endpoint, faults) as flaky:
        s3_at(flaky)
        assert main(["run", str(photo_folder), "--out", "s3://fidoflow-runs/flaky", *FAST]) == 0
    assert faults.failed >= 5, (faults.writes, faults.failed)
    assert_complete(s3_at(s3_endpoint), "fidoflow-runs/flaky",
                    "s3://fidoflow-runs/flaky/masks.zarr")
    import pyarrow.parquet as pq

    predicted = pq.read_table("fidoflow-runs/flaky/predictions", filesystem=s3_at(s3_endpoint),
                              columns=["image_id"])["image_id"].to_pylist()
    assert sorted(predicted) == ["chelsea", "coffee", "sub/rocket"]  # each once


def test_a_store_that_refuses_every_write_of_a_table_is_one_line(photo_folder: Path,
                                                                 s3_endpoint: str,
                                                                 capsys) -> None:
    """Every write under ``predictions/`` fails (a permanent error): the run ends in one line
    that names the store's error, and nothing of a shard is half there."""
    from tests.flaky_store import Faults, flaky_endpoint

    with flaky_endpoint(s3_endpoint, Faults(1, "/fidoflow-runs/refused/predictions/",
                                                      written=False)) as flaky:
        s3_at(flaky)
        assert main(["run", str(photo_folder), "--out", "s3://fidoflow-runs/refused",
                     *FAST]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fidoflow: error:"), lines
    assert "did not take s3://fidoflow-runs/refused/predictions/part-" in lines[0], lines
    assert "injected" in lines[0] and "rerun" in lines[0], lines
    fs = s3_at(s3_endpoint)
    assert not fs.exists("fidoflow-runs/refused/predictions")
    assert not fs.exists("fidoflow-runs/refused/.lock")
