"""--dask-address against a real `dask scheduler` and two `dask worker` processes on loopback."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from fidoflow.flows.cli import main
from fidoflow.storage import parts, tables
from fidoflow.storage.runfolder import RunFolder
from tests.ports import reserved_port

pytestmark = pytest.mark.slow

FAST = ["--iterations", "2", "--samples", "1", "--mask-size", "8", "--shard-size", "2",
        "--model", "synthetic-cnn", "--explain-only"]


@contextmanager
def dask_cluster(python: str = sys.executable, cwd: Path | None = None, workers: int = 2,
                 nanny: bool = False, wrap: tuple[str, ...] = ()) -> Iterator[str]:
    """A real ``dask scheduler`` and ``workers`` ``dask worker`` processes of the interpreter
    ``python`` in ``cwd``, as remote nodes run them (each worker's command behind ``wrap``);
    yields the scheduler's address once the workers are in."""
    with reserved_port() as port, ExitStack() as stop:
        address = f"tcp://127.0.0.1:{port}"
        started: list[subprocess.Popen] = []
        stop.callback(end, started)
        started.append(subprocess.Popen(
            [python, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
             "--port", str(port), "--dashboard-address", "127.0.0.1:0"], cwd=cwd,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        from distributed import Client

        for _ in range(workers):
            started.append(subprocess.Popen(
                [*wrap, python, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
                 "--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0",
                 "--nanny" if nanny else "--no-nanny"],
                cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        with Client(address, timeout=60) as client:
            client.wait_for_workers(workers, timeout=60)
        yield address


def end(started: list[subprocess.Popen]) -> None:
    """Stop the processes by PID: TERM, then KILL those that linger."""
    for process in reversed(started):
        process.terminate()
    for process in started:
        try:
            process.wait(3)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def scheduler() -> Iterator[str]:
    with dask_cluster() as address:
        yield address


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
    with reserved_port() as port:  # held, never listening: nothing answers there
        assert main(["run", str(photo_folder), "--out", str(tmp_path / "run"), *FAST,
                     "--dask-address", f"tcp://127.0.0.1:{port}"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fidoflow: error: no Dask scheduler answers at")
    assert not (tmp_path / "run").exists()
    assert time.monotonic() - began < 30


def test_a_workers_or_nannys_address_is_one_line_naming_it(photo_folder: Path, tmp_path: Path,
                                                          capsys) -> None:
    """The address of a Dask worker or nanny, not the scheduler's (a slip users make)."""
    from distributed import Client

    with dask_cluster(workers=1, nanny=True) as address, Client(address) as client:
        ((worker, info),) = client.scheduler_info()["workers"].items()
        for role, where in (("worker", worker), ("nanny", info["nanny"])):
            assert main(["run", str(photo_folder), "--out", str(tmp_path / "run"), *FAST,
                         "--dask-address", where]) == 1
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and f"a Dask {role} answers at {where}, not a scheduler" in err[0]
    assert not (tmp_path / "run").exists()


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


def unshare_works() -> bool:
    try:
        return subprocess.run(["unshare", "--mount", "true"], check=False, capture_output=True,
                              timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not unshare_works(), reason="needs unshare --mount (root)")
def test_workers_that_do_not_see_the_run_folder_are_refused_before_the_first_shard(
        photo_folder: Path, tmp_path: Path, capsys) -> None:
    """Workers on 'other nodes': each in a mount namespace where the run folder's parent is an
    empty tmpfs, as a node's local disk would be. The run stops in one line, before any shard."""
    hidden = tmp_path / "local-disk"
    hidden.mkdir()
    node = ("unshare", "--mount", "--propagation", "private", "sh", "-c",
            'mount -t tmpfs none "$0" && exec "$@"', str(hidden))
    run = hidden / "run"
    with dask_cluster(wrap=node) as address:
        assert main(["run", str(photo_folder), "--out", str(run), *FAST,
                     "--dask-address", address]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"the Dask workers do not see the run folder {run}" in err[0]
    assert "shared filesystem" in err[0] or "object-store URL" in err[0]
    assert not parts.done_shards(RunFolder(str(run)), tables.PREDICTIONS)
