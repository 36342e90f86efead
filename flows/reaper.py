"""Processes that die with their run: a watchdog stops what a run started once the run is gone.

``guard_children()`` starts (once per process) ``python -m fidoflow.flows.reaper PID``: a small process in
its own session that notes the descendants of PID (the Prefect API server, Dask workers and
their children) twice a second, and when PID ends — normally, by Ctrl-C, SIGTERM, SIGKILL or a
time-out — terminates those still alive (the same processes: start times are compared, so a
reused PID is never hit), then kills what lingers. Nothing is stopped by name.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil

POLL_SECONDS = 0.5
GRACE_SECONDS = 5.0

_guarded: dict[int, subprocess.Popen] = {}


def guard_children() -> None:
    """Make every process this one starts end when it ends (idempotent per process)."""
    pid = os.getpid()
    if pid in _guarded and _guarded[pid].poll() is None:
        return
    _guarded[pid] = subprocess.Popen(
        [sys.executable, "-m", "fidoflow.flows.reaper", str(pid)], stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        close_fds=True,
    )


def descendants(parent: psutil.Process, me: int) -> dict[int, float]:
    """PID → start time of every live descendant of ``parent`` but the watchdog itself."""
    found = {}
    try:
        children = parent.children(recursive=True)
    except psutil.NoSuchProcess:
        return found
    for child in children:
        if child.pid == me:
            continue
        try:
            found[child.pid] = child.create_time()
        except psutil.NoSuchProcess:
            continue
    return found


def stop_all(known: dict[int, float]) -> None:
    """TERM each process in ``known`` that is still the one noted, then KILL the lingering."""
    alive = []
    for pid, started in known.items():
        try:
            process = psutil.Process(pid)
            if abs(process.create_time() - started) > 0.01:
                continue
            process.terminate()
            alive.append(process)
        except psutil.NoSuchProcess:
            continue
    _, lingering = psutil.wait_procs(alive, timeout=GRACE_SECONDS)
    for process in lingering:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            continue


def watch(pid: int) -> None:
    try:
        parent = psutil.Process(pid)
        born = parent.create_time()
    except psutil.NoSuchProcess:
        return
    me = os.getpid()
    known: dict[int, float] = {}
    while True:
        try:
            running = parent.is_running() and parent.create_time() == born \
                and parent.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            running = False
        if not running:
            break
        known.update(descendants(parent, me))
        known = {p: t for p, t in known.items() if psutil.pid_exists(p)}
        time.sleep(POLL_SECONDS)
    stop_all(known)


if __name__ == "__main__":
    watch(int(sys.argv[1]))
