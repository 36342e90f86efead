"""Processes die with their run: however `fidoflow run` ends, its Prefect server and Dask
cluster end too, and its lease on the run folder is released or left for take-over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.slow

SLOW = ["--model", "synthetic-cnn", "--iterations", "100000", "--samples", "1",
        "--mask-size", "8", "--shard-size", "1", "--explain-only"]


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen]]:
    """The CLIs a test starts: whatever the test's outcome, none is left running with its
    server and workers (a failed assertion must not leave a run of 100000 iterations behind)."""
    clis: list[subprocess.Popen] = []
    yield clis
    for cli in clis:
        if cli.poll() is None:
            family = psutil.Process(cli.pid).children(recursive=True)
            cli.kill()
            cli.wait(10)
            all_gone(family, timeout=5)


def start_run(photo_folder: Path, run: Path, home: Path | None,
              started: list[subprocess.Popen]) -> subprocess.Popen:
    """The CLI in the background: with its own API server in a fresh ``home``, or (None) on
    the session's server."""
    env = dict(os.environ)
    if home is not None:
        env = {k: v for k, v in env.items() if not k.startswith("PREFECT_")}
        env |= {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    cli = subprocess.Popen([sys.executable, "-m", "fidoflow.flows.cli", "run", str(photo_folder),
                            "--out", str(run), *SLOW], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    started.append(cli)
    return cli


def is_dask_worker(process: psutil.Process) -> bool:
    """A worker process: spawned (``spawn_main``) or forked by multiprocessing's fork server
    (not one that ended while it was looked at: a run's short-lived helpers come and go)."""
    try:
        with_parent = [process, process.parent()]
        lines = [" ".join(p.cmdline()) for p in with_parent if p is not None]
    except psutil.NoSuchProcess:
        return False
    return "spawn_main" in lines[0] or (len(lines) > 1 and "forkserver" in lines[1])


def busy_workers(cli: subprocess.Popen, run: Path, timeout: float = 90) -> list[psutil.Process]:
    """Every descendant of the CLI once its Dask workers are explaining (predictions pending)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert cli.poll() is None, cli.communicate()
        family = psutil.Process(cli.pid).children(recursive=True)
        workers = [p for p in family if is_dask_worker(p)]
        if len(workers) >= 2 and (run / "manifest.parquet").exists():
            time.sleep(2)  # the shards are running now
            return psutil.Process(cli.pid).children(recursive=True)
        time.sleep(0.5)
    raise AssertionError("the run's Dask workers never started")


def all_gone(processes: list[psutil.Process], timeout: float = 30) -> list[str]:
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    left = [" ".join(p.cmdline())[:100] for p in alive]
    for process in alive:  # never leave them behind, even when the test fails
        process.kill()
    return left


@pytest.mark.own_server
def test_sigkill_of_the_cli_leaves_no_process_of_the_run(photo_folder: Path, tmp_path: Path,
                                                       started: list) -> None:
    cli = start_run(photo_folder, tmp_path / "run", tmp_path / "home", started)
    family = busy_workers(cli, tmp_path / "run")
    assert any("prefect" in " ".join(p.cmdline()) for p in family)  # the run's API server
    cli.send_signal(signal.SIGKILL)
    cli.wait(10)
    assert all_gone(family) == []


def test_sigterm_ends_the_run_cleanly(photo_folder: Path, tmp_path: Path, started: list) -> None:
    cli = start_run(photo_folder, tmp_path / "run", None, started)
    family = busy_workers(cli, tmp_path / "run")
    cli.send_signal(signal.SIGTERM)
    cli.communicate(timeout=60)
    assert cli.returncode == 128 + signal.SIGTERM
    assert all_gone(family) == []
    assert not (tmp_path / "run" / ".lock").exists()
    assert list((tmp_path / "run").rglob(".*.tmp")) == []
