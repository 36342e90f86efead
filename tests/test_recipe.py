"""The README's "Scheduled runs" recipe, run as written against real processes: a Prefect server
on a free loopback port, the real prefect.yaml, a process worker, `deployment run --watch`."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import psutil
import pytest

from fidoflow.storage import parts, tables
from fidoflow.storage.runfolder import RunFolder
from tests.ports import reserved_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
FAST = {"model": "synthetic-cnn", "iterations": 2, "samples": 1, "mask_size": 8, "shard_size": 2}


def recipe() -> str:
    """The shell block that follows the README's recipe marker."""
    text = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- recipe.*?-->\s*```sh\n(.*?)```", text, re.DOTALL)
    assert match, "README lost its recipe block"
    return match.group(1)


def stop_by_pid(pids: list[int]) -> None:
    """Stop each process and its descendants (never by name)."""
    found = []
    for pid in pids:
        try:
            parent = psutil.Process(pid)
            found += [parent, *parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
    for process in found:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(found, timeout=10)


@pytest.mark.own_server
def test_the_readme_recipe_deploys_and_runs_to_completion(photo_folder: Path,
                                                         tmp_path: Path) -> None:
    home, run = tmp_path / "prefect", tmp_path / "adhoc"
    home.mkdir()
    script = recipe()
    assert 'runs/demo-archive' in script and '--port 4200' in script
    script = (script
              .replace('"$PWD/.cache/prefect"', f'"{home}"')
              .replace('"$PWD/runs/demo-archive"', f'"{photo_folder}"')
              .replace('"$PWD/runs/adhoc" --watch',
                       f"\"{run}\" --param settings='{json.dumps(FAST)}' --watch"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_WORKER_QUERY_SECONDS"] = "2"  # the worker picks the run up sooner
    env["COLUMNS"] = "200"  # the artifact table shows its keys whole
    try:
        with reserved_port() as port:  # the server binds it beside the hold; no one else can
            done = subprocess.run(["bash", "-euo", "pipefail", "-c",
                                   script.replace("4200", str(port))], cwd=ROOT, env=env,
                                  check=False, capture_output=True, text=True, timeout=300,
                                  start_new_session=True)
    finally:
        pids = [int(p.read_text()) for p in (home / "worker.pid", home / "server.pid")
                if p.exists() and p.read_text().strip()]
        stop_by_pid(pids)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Flow run finished successfully in 'Completed'" in done.stdout + done.stderr
    assert "fidoflow-summary" in done.stdout  # prefect artifact ls
    for name in ("run.json", "manifest.parquet", "masks.zarr", "summary.parquet", "report.html"):
        assert (run / name).exists(), name
    assert parts.done_shards(RunFolder(str(run)), tables.PREDICTIONS) == {0, 1}
    assert not (run / ".lock").exists()
    assert not any(psutil.pid_exists(pid) for pid in pids)
