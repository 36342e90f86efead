"""The `nightly` deployment of prefect.yaml as operators run it (issue 32): a real Prefect server,
the real deployments, a process worker. Run twice with images added between, the second night
explains exactly the new ones; two nights due at once never make a second writer: the later one
waits for its concurrency slot, visibly, then runs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import duckdb
import pytest

from tests.ports import reserved_port
from tests.prefect_server import start_prefect_server
from tests.test_increments import photo
from tests.test_recipe import ROOT, stop_by_pid

pytestmark = [pytest.mark.slow, pytest.mark.own_server]

SETTINGS = {"model": "synthetic-cnn", "method": "saliency", "iterations": 2, "samples": 1,
            "mask_size": 8, "shard_size": 2, "explain_only": True, "workers": 1}
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def prefect(*argv: str, env: dict, timeout: float = 240) -> str:
    done = subprocess.run([sys.executable, "-m", "prefect", *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout + done.stderr


def states(url: str, run_id: str) -> list[str]:
    """The flow run's state names, oldest first (read from the server's REST API)."""
    request = urllib.request.Request(f"{url}/flow_run_states/?flow_run_id={run_id}")
    with urllib.request.urlopen(request, timeout=10) as response:
        found = json.loads(response.read())
    return [s["name"] for s in sorted(found, key=lambda s: s["timestamp"])]


def test_nights_explain_what_arrived_and_never_overlap(photo_folder: Path, tmp_path: Path) -> None:
    home, run = tmp_path / "prefect", tmp_path / "nightly"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_WORKER_QUERY_SECONDS="2")
    started: list[int] = []
    try:
        with reserved_port() as port:
            url = env["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
            started.append(start_prefect_server(port, env).pid)
        prefect("work-pool", "create", "fidoflow-process", "--type", "process", "--overwrite",
                env=env)
        prefect("--no-prompt", "deploy", "--all", env=env)
        worker = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool",
                                   "fidoflow-process"], cwd=tmp_path, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
        started.append(worker.pid)
        night = ["deployment", "run", "explain-archive/nightly", "--param",
                 f"archive={photo_folder}", "--param", f"out={run}", "--param",
                 f"settings={json.dumps(SETTINGS)}"]

        assert "'Completed'" in prefect(*night, "--watch", env=env)
        photo(photo_folder / "night2" / "a.png", 1)
        photo(photo_folder / "night2" / "b.png", 2)
        assert "'Completed'" in prefect(*night, "--watch", env=env)
        history = duckdb.sql(f"SELECT increment, images_new, images_explained, flow_run_id "
                             f"FROM '{run}/increments/*.parquet' ORDER BY 1").fetchall()
        assert [h[:3] for h in history] == [(1, 3, 3), (2, 2, 2)]
        assert all(h[3] for h in history)  # each names its flow run
        predicted = duckdb.sql(f"SELECT image_id, increment FROM '{run}/predictions/*.parquet' "
                               "ORDER BY 1").fetchall()
        assert predicted == [("chelsea", 1), ("coffee", 1), ("night2/a", 2), ("night2/b", 2),
                             ("sub/rocket", 1)]

        photo(photo_folder / "night3" / "c.png", 3)
        ids = [re.search(r"UUID: ([0-9a-f-]{36})", prefect(*night, env=env)).group(1)
               for _ in range(2)]  # two nights due at once
        deadline = time.monotonic() + 300
        while not all(states(url, i)[-1].upper() in FINAL for i in ids):
            assert time.monotonic() < deadline, [states(url, i) for i in ids]
            time.sleep(1)
        seen = [states(url, i) for i in ids]
        assert all(s[-1] == "Completed" for s in seen), seen
        assert any("AwaitingConcurrencySlot" in s for s in seen), seen  # one waited its turn
        history = duckdb.sql(f"SELECT images_new FROM '{run}/increments/*.parquet' "
                             "ORDER BY increment").fetchall()
        assert [h[0] for h in history] == [3, 2, 1, 0]
    finally:
        stop_by_pid(started)
