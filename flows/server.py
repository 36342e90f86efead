"""One Prefect API for a whole run: a local server on a 127.0.0.1 port, stopped by PID.

Without it every Dask worker process would start its own temporary server (~10 s each). The
port is bound here and the bound socket handed to the server process (``python -m
fidoflow.flows.server FD``), so no other process can take it between the choice and the
server's start (a Dask worker did: the health check then talked to Dask).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

IDLE_SERVICES = ("cancellation_cleanup", "db_vacuum", "event_persister", "event_logger",
                 "foreman", "late_runs", "scheduler", "pause_expirations", "repossessor",
                 "cleanup_reconciler", "triggers")


def bound_socket(port: int = 0) -> socket.socket:
    """A TCP socket bound to ``port`` of 127.0.0.1 (0: one the OS chooses), held until closed,
    inheritable by a child process that listens on it."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the port of a server just gone
    sock.bind(("127.0.0.1", port))
    sock.set_inheritable(True)
    return sock


def prefect_home() -> Path:
    """PREFECT_HOME as set, else a cache folder of the working directory (never ~/.prefect)."""
    home = Path(os.environ.setdefault("PREFECT_HOME", str(Path.cwd() / ".cache" / "prefect")))
    home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    return home


def wait_healthy(url: str, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"prefect server exited with status {process.returncode}; "
                               f"see {prefect_home() / 'server.log'}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"prefect server at {url} not healthy after {timeout:.0f} s")


RESTARTS = 3  # a private server that dies is started again this many times a run


@dataclass
class ApiServer:
    """The run's Prefect API: its URL, and the server process when this run started one
    (``restarts``: how often it had to be started again)."""

    url: str
    process: subprocess.Popen | None = None
    restarts: int = 0

    @property
    def private(self) -> bool:
        """Started for this run alone (no one else watches it)."""
        return self.process is not None

    def ready(self, timeout: float = 90.0) -> str:
        """The URL once the API answers."""
        if self.process is not None:
            wait_healthy(self.url, self.process, timeout)
        return self.url


def _start(port: int) -> tuple[subprocess.Popen, int]:
    """A private server process on ``port`` (0: a free one), listening on a socket bound here;
    returns it and its port."""
    # the task-run recorder alone of the server's services: the run's tasks are in its
    # database (and the UI), the schedulers and sweepers a private server needs not run
    env = dict(os.environ, PREFECT_SERVER_UI_ENABLED="false",
               **{f"PREFECT_SERVER_SERVICES_{name.upper()}_ENABLED": "false"
                  for name in IDLE_SERVICES})
    env.pop("PREFECT_API_URL", None)  # set for the run's clients once the first one started
    with bound_socket(port) as sock, open(prefect_home() / "server.log", "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", __name__, str(sock.fileno())], pass_fds=(sock.fileno(),),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env,
        )
        return process, sock.getsockname()[1]


def _supervise(api: ApiServer, ended: threading.Event,
               on_lost: Callable[[str], object] | None) -> None:
    """Start the private server again, on its port and database, when it dies before the run
    ends (every client of the run retries its calls meanwhile); after ``RESTARTS``, or when its
    port is taken, call ``on_lost`` with one line saying what ended."""
    log = logging.getLogger("fidoflow.server")
    while not ended.wait(0.5):
        process = api.process
        if process is None or process.poll() is None:
            continue
        line = (f"the run's Prefect API server (pid {process.pid}) ended with status "
                f"{process.returncode}")
        if api.restarts < RESTARTS:
            try:
                api.process, _ = _start(int(api.url.rsplit(":", 1)[1].split("/")[0]))
                api.restarts += 1
                log.warning("%s; started again as pid %d", line, api.process.pid)
                continue
            except OSError as exc:
                line += f" and could not be started again ({exc})"
        else:
            line += f" after {RESTARTS} restarts"
        log.error("%s", line)
        if on_lost is not None:
            on_lost(line)
        return


@contextmanager
def api_server(on_lost: Callable[[str], object] | None = None) -> Iterator[ApiServer]:
    """PREFECT_API_URL when set, else a server started now that boots (~3 s of CPU) while the
    caller goes on, recording the run's task runs; it is started again if it dies mid-run
    (``on_lost`` is called with one line when that fails), and stopped, by PID, when the block
    ends."""
    prefect_home()
    if os.environ.get("PREFECT_API_URL"):
        yield ApiServer(os.environ["PREFECT_API_URL"])
        return
    process, port = _start(0)
    api = ApiServer(f"http://127.0.0.1:{port}/api", process)
    os.environ["PREFECT_API_URL"] = api.url  # processes started from now on use it
    ended = threading.Event()
    watcher = threading.Thread(target=_supervise, args=(api, ended, on_lost), daemon=True,
                               name="fidoflow-api-server")
    watcher.start()
    try:
        yield api
    finally:
        ended.set()
        watcher.join()
        os.environ.pop("PREFECT_API_URL", None)
        stop(api.process)


def retries_for(seconds: float) -> int:
    """The fewest retries whose waits (Prefect's client waits 2, 4, 8, ... s between
    attempts) add up to ``seconds``."""
    retries = 1
    while 2 ** (retries + 1) - 2 < seconds:
        retries += 1
    return retries


@contextmanager
def patient_clients(seconds: float) -> Iterator[int]:
    """Prefect's clients of this block, and of the processes it starts (local Dask workers),
    retry an API that does not answer for about ``seconds`` (at most twice that) before a
    call fails; yields the retries."""
    from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    retries = retries_for(seconds)
    before = os.environ.get("PREFECT_CLIENT_MAX_RETRIES")
    os.environ["PREFECT_CLIENT_MAX_RETRIES"] = str(retries)
    try:
        with temporary_settings(updates={PREFECT_CLIENT_MAX_RETRIES: retries}):
            yield retries
    finally:
        if before is None:
            os.environ.pop("PREFECT_CLIENT_MAX_RETRIES", None)
        else:
            os.environ["PREFECT_CLIENT_MAX_RETRIES"] = before


@contextmanager
def prefect_api(timeout: float = 90.0, meanwhile: Callable[[], object] | None = None) -> Iterator[str]:
    """Yield the URL of ``api_server()`` once it answers; ``meanwhile`` runs while it boots
    (the caller's own imports overlap the boot instead of following it)."""
    with api_server() as api:
        if meanwhile is not None:
            meanwhile()
        yield api.ready(timeout)


def stop(process: subprocess.Popen) -> None:
    """Stop the server's process group by PID: TERM, then KILL if it lingers."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def flush_prefect_logs() -> None:
    """Send buffered run logs before the run's API server stops."""
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=5)


def serve(fd: int) -> None:
    """The server process: Prefect's API app (its services as the environment enables them)
    under uvicorn, listening on the inherited socket ``fd``, as ``prefect server start`` runs
    it in the foreground."""
    import uvicorn
    from prefect.server.api.server import create_app

    sock = socket.socket(fileno=fd)
    config = uvicorn.Config(create_app(final=True), log_level="warning")
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    serve(int(sys.argv[1]))
