"""One writer per run folder: the lease is exclusive, names its holder, and is taken over only
from a holder that is gone or expired."""

from __future__ import annotations

import json
import multiprocessing as mp
import socket
import time
from pathlib import Path

import pytest

from fidoflow.storage.lease import LOCK_NAME, Lease, RunLocked
from fidoflow.storage.runfolder import RunFolder


def test_second_lease_fails_naming_the_holder_and_release_frees_it(tmp_path: Path) -> None:
    run = RunFolder(str(tmp_path / "run"))
    with Lease(run):
        held = json.loads((tmp_path / "run" / LOCK_NAME).read_text())
        assert held["host"] == socket.gethostname()
        with pytest.raises(RunLocked, match=f"pid {held['pid']}"):
            Lease(run).acquire()
    assert not (tmp_path / "run" / LOCK_NAME).exists()
    with Lease(run):
        pass


def write_lock(path: Path, **fields: object) -> None:
    path.mkdir(parents=True, exist_ok=True)
    record = {"host": socket.gethostname(), "pid": 1, "pid_started": 0.0, "token": "old",
              "expires": time.time() + 600, "taken": "then"} | fields
    (path / LOCK_NAME).write_text(json.dumps(record))


def test_a_dead_holder_on_this_host_is_taken_over(tmp_path: Path) -> None:
    dead = mp.get_context("spawn").Process(target=time.sleep, args=(0,))
    dead.start()
    dead.join()
    write_lock(tmp_path, pid=dead.pid)
    with Lease(RunFolder(str(tmp_path))) as lease:
        assert json.loads((tmp_path / LOCK_NAME).read_text())["token"] == lease.token


def test_a_live_holder_elsewhere_holds_until_its_lease_expires(tmp_path: Path) -> None:
    write_lock(tmp_path, host="another-host")
    with pytest.raises(RunLocked, match="host another-host"):
        Lease(RunFolder(str(tmp_path))).acquire()
    write_lock(tmp_path, host="another-host", expires=time.time() - 1)
    with Lease(RunFolder(str(tmp_path))):
        pass


def test_the_lease_is_renewed_while_held(tmp_path: Path) -> None:
    with Lease(RunFolder(str(tmp_path)), ttl=0.4):
        first = json.loads((tmp_path / LOCK_NAME).read_text())["expires"]
        time.sleep(0.5)
        later = json.loads((tmp_path / LOCK_NAME).read_text())["expires"]
    assert later > first


def contend(root: str, barrier, results) -> None:
    barrier.wait()
    try:
        lease = Lease(RunFolder(root))
        lease.acquire()
        results.put("won")
        time.sleep(1.0)  # hold it while the other one tries
        lease.release()
    except RunLocked:
        results.put("refused")


@pytest.mark.parametrize("stale", [False, True])
def test_two_processes_released_together_one_wins(tmp_path: Path, stale: bool) -> None:
    if stale:  # both race to take over the same dead holder's lease
        write_lock(tmp_path / "run", pid=2 ** 22 + 7, pid_started=1.0)
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=contend, args=(str(tmp_path / "run"), barrier, results))
             for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert sorted(results.get(timeout=5) for _ in procs) == ["refused", "won"]


def test_memory_folders_are_leased_too() -> None:
    run = RunFolder("memory://lease-test/run")
    with Lease(run), pytest.raises(RunLocked):
        Lease(run).acquire()
    with Lease(run):
        pass


def test_a_file_in_place_of_the_folder_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "run").write_text("not a folder")
    with pytest.raises(NotADirectoryError, match="exists and is not a folder"):
        Lease(RunFolder(str(tmp_path / "run"))).acquire()


def test_a_second_cli_run_fails_at_once_naming_the_holder(tmp_path: Path, capsys) -> None:
    from fidoflow.flows.cli import main

    (tmp_path / "photos").mkdir()
    with Lease(RunFolder(str(tmp_path / "run"))):
        began = time.monotonic()
        assert main(["run", str(tmp_path / "photos"), "--out", str(tmp_path / "run"),
                     "--model", "synthetic-cnn"]) == 1
        assert time.monotonic() - began < 10
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is being written by another run" in err[0]
