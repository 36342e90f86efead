"""Ports for the servers the tests start, held so that no other process can take them.

A port picked free and released is a race on a machine where other tests start Dask workers:
one took the port a test's server was about to bind. ``reserved_port`` binds the port
(SO_REUSEADDR, never listening) and holds it while the block runs: the OS hands it to no other
process, and the one server the test starts there, which sets SO_REUSEADDR as uvicorn, tornado
and werkzeug do, binds it beside the hold. Connecting to a held port is refused: a held port is
also an address where nothing answers.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def reserved_port() -> Iterator[int]:
    with socket.socket() as hold:
        hold.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        hold.bind(("127.0.0.1", 0))
        yield hold.getsockname()[1]
