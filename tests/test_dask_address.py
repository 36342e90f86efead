"""--dask-address against a real `dask scheduler` and two `dask worker` processes on loopback."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from fidoflow.flows.cli import main
from fidoflow.flows.server import free_port
from fidoflow.storage import parts, tables
from fidoflow.storage.runfolder import RunFolder

pytestmark = pytest.mark.slow

FAST = ["--iterations", "2", "--samples", "1", "--mask-size", "8", "--shard-size", "2",
        "--model", "synthetic-cnn", "--explain-only"]


@pytest.fixture
def scheduler() -> str:
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    dask = [sys.executable, "-m"]
    started = [subprocess.Popen([*dask, "distributed.cli.dask_scheduler", "--host",
                                 "127.0.0.1", "--port", str(port),
                                 "--dashboard-address", "127.0.0.1:0"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        from distributed import Client

        for _ in range(2):
            started.append(subprocess.Popen(
                [*dask, "distributed.cli.dask_worker", address, "--nthreads", "1",
                 "--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0", "--no-nanny"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=60)
        yield address
    finally:
        for process in reversed(started):
            process.terminate()
        for process in started:
            try:
                process.wait(3)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_a_run_on_an_existing_scheduler_uses_its_workers(photo_folder: Path, tmp_path: Path,
                                                         scheduler: str, capsys) -> None:
    run = tmp_path / "run"
    assert main(["run", str(photo_folder), "--out", str(run), *FAST,
                 "--dask-address", scheduler]) == 0
    assert "2 of 2 shards run, 3 images, 0 errors" in capsys.readouterr().out
    assert parts.done_shards(RunFolder(str(run)), tables.PREDICTIONS) == {0, 1}


def test_a_wrong_address_fails_in_seconds_before_writing(photo_folder: Path, tmp_path: Path,
                                                         capsys) -> None:
    began = time.monotonic()
    assert main(["run", str(photo_folder), "--out", str(tmp_path / "run"), *FAST,
                 "--dask-address", f"tcp://127.0.0.1:{free_port()}"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fidoflow: error: no Dask scheduler answers at")
    assert not (tmp_path / "run").exists()
    assert time.monotonic() - began < 30


def test_a_cluster_class_from_the_settings_is_started_and_scaled_to_the_workers(
        photo_folder: Path, tmp_path: Path, capsys) -> None:
    """--cluster names a cluster manager (here the one Dask ships; dask_jobqueue.SLURMCluster
    on a SLURM site), --cluster-options its keyword arguments; adaptive scaling holds it at
    --workers."""
    options = tmp_path / "cluster.yaml"
    options.write_text("n_workers: 0\nprocesses: true\nthreads_per_worker: 1\n"
                       "host: 127.0.0.1\ndashboard_address: 127.0.0.1:0\n")
    run = tmp_path / "run"
    assert main(["run", str(photo_folder), "--out", str(run), *FAST, "--workers", "2",
                 "--cluster", "distributed.LocalCluster", "--cluster-options", str(options)]) == 0
    assert "2 of 2 shards run, 3 images, 0 errors" in capsys.readouterr().out
    assert parts.done_shards(RunFolder(str(run)), tables.PREDICTIONS) == {0, 1}


@pytest.mark.parametrize(("argv", "message"), [
    (["--cluster", "nowhere.Cluster"], "cannot import nowhere"),
    (["--cluster", "distributed.NoSuchCluster"], "not found: give package.module.Class"),
    (["--cluster-options", "x.yaml"], "--cluster-options needs --cluster"),
    (["--cluster", "distributed.LocalCluster", "--dask-address", "tcp://127.0.0.1:1"],
     "not both"),
])
def test_bad_cluster_settings_are_one_line(argv: list[str], message: str, photo_folder: Path,
                                           tmp_path: Path, capsys) -> None:
    assert main(["run", str(photo_folder), "--out", str(tmp_path / "run"), *FAST, *argv]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "run").exists()
