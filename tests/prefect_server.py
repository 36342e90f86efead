"""A real ``prefect server start`` for the tests that need one of their own: on a port the test
holds (tests/ports.py), healthy before it returns, stopped by PID."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request

from fidoflow.flows.server import stop


def start_prefect_server(port: int, env: dict, timeout: float = 120) -> subprocess.Popen:
    """``prefect server start`` on 127.0.0.1:``port`` (the API without its UI), once
    ``/health`` answers."""
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host",
                               "127.0.0.1", "--port", str(port), "--no-ui"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2).close()
            return server
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                stop_prefect_server(server)
                raise AssertionError(f"prefect server on port {port} did not start") from None
            time.sleep(0.5)


def stop_prefect_server(server: subprocess.Popen) -> None:
    """The server and the processes it started (its own session), by its PID: as fidoflow
    stops the servers it starts."""
    stop(server)
