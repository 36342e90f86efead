"""Faults at archive scale (issue 33): the run's own Prefect API server killed mid-run is
started again and the run goes on (or it ends in one line within 30 s); an external server
restarted mid-run costs nothing, one gone for good one line after ``--api-patience``; runs
started side by side on one machine, each with its own server and cluster, all complete."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from fidoflow.storage import parts, tables
from fidoflow.storage.runfolder import RunFolder
from tests.ports import reserved_port
from tests.prefect_server import start_prefect_server, stop_prefect_server
from tests.test_dask_address import dask_cluster
from tests.test_increments import once_each, photo

pytestmark = [pytest.mark.slow, pytest.mark.own_server]

SLOW = ["--iterations", "40", "--samples", "4", "--mask-size", "8", "--shard-size", "1",
        "--method", "scd", "--model", "synthetic-cnn", "--explain-only", "--workers", "1"]


def own_env(home: Path) -> dict:
    """The environment of a CLI that starts its own Prefect server in ``home``."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(home)
    return env


def cli(photos: Path, run: Path, env: dict, *more: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fidoflow.flows.cli", "run", str(photos),
                             "--out", str(run), *SLOW, *more], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def api_server_of(process: subprocess.Popen) -> psutil.Process:
    for child in psutil.Process(process.pid).children(recursive=True):
        try:
            if "fidoflow.flows.server" in " ".join(child.cmdline()):
                return child
        except psutil.NoSuchProcess:
            continue
    raise AssertionError("the CLI runs no API server of its own")


def eight_photos(folder: Path) -> Path:
    """The three photos of ``photo_folder`` and five more: 8 shards of one image."""
    for k in range(5):
        photo(folder / "more" / f"{k}.png", k)
    return folder


def under_fault(started: subprocess.Popen, run: Path, inject: Callable[[], object],
                timeout: float = 300) -> tuple[str, str, float]:
    """Once the run's first shard is done: ``inject()``; then the CLI's output and the seconds
    from the fault to its end (a CLI that outlives the test is killed, by its group)."""
    try:
        deadline = time.monotonic() + 180
        while not parts.done_shards(RunFolder(str(run)), tables.PREDICTIONS):
            assert time.monotonic() < deadline and started.poll() is None, started.stderr
            time.sleep(0.2)
        inject()
        injected = time.monotonic()
        out, err = started.communicate(timeout=timeout)
        return out, err, time.monotonic() - injected
    finally:
        if started.poll() is None:
            os.killpg(started.pid, signal.SIGKILL)


def test_the_private_server_killed_mid_run_costs_at_most_one_line(photo_folder: Path,
                                                                   tmp_path: Path) -> None:
    run, env = tmp_path / "run", own_env(tmp_path / "prefect")
    started = cli(eight_photos(photo_folder), run, env)
    out, err, noticed = under_fault(started, run, lambda: api_server_of(started).kill())
    lines = err.strip().splitlines()
    if started.returncode == 0:  # started again: the run went on
        assert not lines, err
        assert "8 images" in out or "of 8 shards run" in out, out
        assert "Prefect API server" in (tmp_path / "prefect" / "fidoflow.log").read_text()
    else:
        assert noticed < 30 and len(lines) == 1, (noticed, err)
        assert "Prefect API server" in lines[0] and "rerun" in lines[0]
        rerun = subprocess.run(started.args, env=env, capture_output=True, text=True,
                               timeout=300, check=False)
        assert rerun.returncode == 0, rerun.stderr
    assert len(once_each(run, "scd")) == 8
    assert not [p for p in psutil.process_iter(["cmdline"])
                if str(run) in " ".join(p.info["cmdline"] or [])]


def external_env(home: Path, port: int) -> dict:
    """The environment of a CLI whose runs report to the server on ``port``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return env | {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                  "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}




def flow_run_states(port: int) -> list[str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/flow_runs/filter",
                                     data=b"{}", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return sorted(r["state_type"] for r in json.loads(response.read()))


def test_an_external_server_restarted_mid_run_costs_nothing(photo_folder: Path,
                                                            tmp_path: Path) -> None:
    """``prefect server start`` stopped once a shard is done and started again 15 s later, on
    its database: the run goes on, says nothing, and its flow runs end Completed there."""
    run = tmp_path / "run"
    with reserved_port() as port:
        env = external_env(tmp_path / "prefect", port)
        servers = [start_prefect_server(port, env)]

        def restart() -> None:
            stop_prefect_server(servers[-1])
            time.sleep(15)
            servers.append(start_prefect_server(port, env))

        try:
            started = cli(eight_photos(photo_folder), run, env)
            out, err, _ = under_fault(started, run, restart)
            assert started.returncode == 0, err
            assert not err.strip(), err
            assert "8 images, 0 errors" in out, out
            assert flow_run_states(port) == ["COMPLETED", "COMPLETED"]  # the flow, its subflow
        finally:
            stop_prefect_server(servers[-1])
    assert len(once_each(run, "scd")) == 8


def test_an_external_server_gone_for_good_ends_the_run_in_one_line(photo_folder: Path,
                                                                   tmp_path: Path) -> None:
    """With ``--api-patience 4`` the run ends within two minutes of the server's end, in one line
    that names the API and says a rerun resumes; the rerun does."""
    run = tmp_path / "run"
    with reserved_port() as port:
        env = external_env(tmp_path / "prefect", port)
        server = start_prefect_server(port, env)
        started = cli(eight_photos(photo_folder), run, env, "--api-patience", "4")
        _, err, took = under_fault(started, run, lambda: stop_prefect_server(server))
        lines = err.strip().splitlines()
        assert started.returncode == 1 and len(lines) == 1, err
        assert f"127.0.0.1:{port}" in lines[0] and "rerun" in lines[0], lines
        assert took < 120, took  # a few calls in a row each wait out the patience
        server = start_prefect_server(port, env)
        try:
            rerun = subprocess.run(started.args, env=env, capture_output=True, text=True,
                                   timeout=300, check=False)
        finally:
            stop_prefect_server(server)
    assert rerun.returncode == 0, rerun.stderr
    assert len(once_each(run, "scd")) == 8


def test_the_scheduler_of_dask_address_dying_ends_the_run_in_one_line(photo_folder: Path,
                                                                      tmp_path: Path) -> None:
    """The scheduler of ``--dask-address`` ends abruptly once a shard is done: one line within
    30 s that says so; the rerun against a new scheduler resumes."""
    from distributed import Client

    def end_scheduler() -> None:  # it exits as if killed
        with Client(address, timeout=30) as client:
            client.run_on_scheduler(lambda: threading.Timer(0.2, os._exit, (1,)).start())

    run, env = tmp_path / "run", own_env(tmp_path / "prefect")
    with dask_cluster() as address:
        started = cli(eight_photos(photo_folder), run, env, "--dask-address", address)
        _, err, took = under_fault(started, run, end_scheduler, timeout=120)
    lines = err.strip().splitlines()
    assert started.returncode == 1 and len(lines) == 1, err
    assert f"Dask scheduler {address} went away" in lines[0] and "rerun" in lines[0], lines
    assert took < 30, took
    assert parts.done_shards(RunFolder(str(run)), tables.PREDICTIONS)
    with dask_cluster() as again:
        rerun = subprocess.run([*started.args[:-1], again], env=env, capture_output=True,
                               text=True, timeout=300, check=False)
    assert rerun.returncode == 0, rerun.stderr
    assert len(once_each(run, "scd")) == 8


def test_runs_started_side_by_side_all_complete(photo_folder: Path, tmp_path: Path) -> None:
    """Each with its own server (a port held from its choice to its bind) and cluster."""
    fast = ["--iterations", "2", "--samples", "1", "--mask-size", "8", "--shard-size", "2",
            "--method", "saliency", "--model", "synthetic-cnn", "--explain-only"]
    runs = [subprocess.Popen(
        [sys.executable, "-m", "fidoflow.flows.cli", "run", str(photo_folder), "--out",
         str(tmp_path / f"run-{i}"), *fast], env=own_env(tmp_path / f"prefect-{i}"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(3)]
    done = [r.communicate(timeout=300) for r in runs]
    assert [r.returncode for r in runs] == [0, 0, 0], [e for _, e in done]
    for i in range(3):
        assert len(once_each(tmp_path / f"run-{i}")) == 3


@pytest.mark.usefixtures("prefect_server")
def test_a_poison_image_becomes_one_error_row_and_the_run_goes_on(
        photo_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """An image whose explaining kills the worker process every time: the task runs again, the
    shard is probed image by image, and the run ends with that image as a ``WorkerDied`` row."""
    import torch
    from PIL import Image

    from fidoflow.flows.cli import main
    from tests.poison import PoisonNet

    monkeypatch.setenv("PREFECT_API_URL", os.environ["FIDOFLOW_TEST_PREFECT_API_URL"])
    Image.new("RGB", (64, 48), (255, 0, 0)).save(photo_folder / "red.png")
    model = tmp_path / "poison.pt"
    torch.save(PoisonNet(), model)
    run = tmp_path / "run"
    assert main(["run", str(photo_folder), "--out", str(run), "--model", str(model),
                 "--trust-model-code", "--method", "saliency", "--explain-only",
                 "--shard-size", "2", "--mask-size", "8", "--workers", "2"]) == 0
    assert "4 images, 1 errors" in capsys.readouterr().out
    errors = parts.read_errors(RunFolder(str(run))).to_pylist()
    assert [(e["image_id"], e["error_type"]) for e in errors] == [("red", "WorkerDied")]
    predicted = {r["image_id"] for r in parts.read_parts(RunFolder(str(run)),
                                                          tables.PREDICTIONS).to_pylist()}
    assert predicted == {"chelsea", "coffee", "sub/rocket"}
