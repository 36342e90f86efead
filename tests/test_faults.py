"""Faults at archive scale (issue 33): the run's own Prefect API server killed mid-run is
started again and the run goes on (or it ends in one line within 30 s), and runs started side by
side on one machine, each with its own server and cluster, all complete."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from fidoflow.storage import parts, tables
from fidoflow.storage.runfolder import RunFolder
from tests.test_increments import once_each, photo

pytestmark = [pytest.mark.slow, pytest.mark.own_server]

SLOW = ["--iterations", "40", "--samples", "4", "--mask-size", "8", "--shard-size", "1",
        "--method", "scd", "--model", "synthetic-cnn", "--explain-only", "--workers", "1"]


def own_env(home: Path) -> dict:
    """The environment of a CLI that starts its own Prefect server in ``home``."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(home)
    return env


def cli(photos: Path, run: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fidoflow.flows.cli", "run", str(photos),
                             "--out", str(run), *SLOW], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def api_server_of(process: subprocess.Popen) -> psutil.Process:
    for child in psutil.Process(process.pid).children(recursive=True):
        try:
            if "fidoflow.flows.server" in " ".join(child.cmdline()):
                return child
        except psutil.NoSuchProcess:
            continue
    raise AssertionError("the CLI runs no API server of its own")


def test_the_private_server_killed_mid_run_costs_at_most_one_line(photo_folder: Path,
                                                                   tmp_path: Path) -> None:
    for k in range(5):
        photo(photo_folder / "more" / f"{k}.png", k)
    run, env = tmp_path / "run", own_env(tmp_path / "prefect")
    started = cli(photo_folder, run, env)
    try:
        deadline = time.monotonic() + 180
        while not parts.done_shards(RunFolder(str(run)), tables.PREDICTIONS):
            assert time.monotonic() < deadline and started.poll() is None, started.stderr
            time.sleep(0.2)
        api_server_of(started).kill()
        killed = time.monotonic()
        out, err = started.communicate(timeout=300)
        noticed = time.monotonic() - killed
    finally:
        if started.poll() is None:
            os.killpg(started.pid, signal.SIGKILL)
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
