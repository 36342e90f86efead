"""An S3 endpoint that fails some writes: a proxy on loopback in front of a moto server.

Every ``every``-th write (PUT, POST, DELETE) is answered with S3's 500 ``InternalError``: on
odd failures before the request reaches the store (nothing written), on even ones after it
(written, but the client is told it failed, the nastier case). With ``every`` = 1, a
``failing`` prefix and ``written=False``, every write under that prefix fails and none is
written: a permanent error.
"""

from __future__ import annotations

import http.client
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

FAILURE = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code>'
           b"<Message>injected by tests/flaky_store.py</Message></Error>")
WRITES = ("PUT", "POST", "DELETE")


class Faults:
    """How often writes fail, and what was done: writes seen, failures injected."""

    def __init__(self, every: int, failing: str = "/", written: bool = True) -> None:
        self.every, self.failing, self.written = every, failing, written
        self.writes = self.failed = 0
        self.lock = threading.Lock()

    def verdict(self, method: str, path: str) -> str | None:
        """None (pass it on), ``before`` (fail without writing) or ``after`` (write, then
        fail)."""
        if method not in WRITES or not path.startswith(self.failing):
            return None
        with self.lock:
            self.writes += 1
            if self.writes % self.every:
                return None
            self.failed += 1
            return "after" if self.written and not self.failed % 2 else "before"


def handler(upstream: str, faults: Faults) -> type[BaseHTTPRequestHandler]:
    target = urlsplit(upstream)

    class Proxy(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # quiet
            pass

        def relay(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            verdict = faults.verdict(self.command, self.path)
            if verdict != "before":
                upstream_conn = http.client.HTTPConnection(target.hostname, target.port,
                                                           timeout=60)
                upstream_conn.request(self.command, self.path, body,
                                      {k: v for k, v in self.headers.items()})
                reply = upstream_conn.getresponse()
                data = reply.read()
                upstream_conn.close()
            if verdict is not None:
                status, headers, data = 500, [("Content-Type", "application/xml")], FAILURE
            else:  # a HEAD keeps the object's length; other replies get their body's
                status = reply.status
                headers = [(k, v) for k, v in reply.getheaders()
                           if k.lower() not in ("transfer-encoding", "connection")
                           and (k.lower() != "content-length" or self.command == "HEAD")]
            self.send_response(status)
            for key, value in headers:
                self.send_header(key, value)
            if self.command != "HEAD" or verdict is not None:
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            self.wfile.flush()

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = relay

    return Proxy


class QuietServer(ThreadingHTTPServer):
    """A stand-in prints no traceback for a client that hung up mid-request (a run that ends
    closes its connections; a busy machine makes that land inside a request)."""

    def handle_error(self, request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            super().handle_error(request, client_address)


@contextmanager
def flaky_endpoint(upstream: str, faults: Faults) -> Iterator[str]:
    """The proxy's URL while the block runs (a port the OS chose, bound before it is named)."""
    server = QuietServer(("127.0.0.1", 0), handler(upstream, faults))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True, name="flaky-store")
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
