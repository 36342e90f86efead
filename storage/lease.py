"""One writer per run folder: a lease file ``<run>/.lock`` taken before anything else is written.

The lease names its holder (host, pid, the process's start time, when it was taken) and expires
unless renewed; a renewing thread keeps it alive while the run works. Another run may take it
over only when the holder is gone (same host, process no longer alive) or the lease expired
(any host). Taking it is an exclusive create, so of two runs released together exactly one wins:
on a local disk a hard link of a fully written file; on other filesystems fsspec's exclusive ``"xb"`` mode where it has
one, else a write read back after a pause (object stores that lack conditional writes).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Self

import psutil

from .runfolder import RunFolder

LOCK_NAME = ".lock"
DEFAULT_TTL = 120.0


class RunLocked(RuntimeError):
    """Another live run holds the folder's lease."""


def process_started(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), or None when there is none."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def holder_gone(record: dict, now: float) -> bool:
    """True when the lease in ``record`` can be taken over."""
    if record.get("expires", 0) < now:
        return True
    if record.get("host") != socket.gethostname():
        return False
    started = process_started(int(record.get("pid", -1)))
    return started is None or abs(started - float(record.get("pid_started", 0))) > 1.0


def sees_lease(run: RunFolder, token: str) -> bool:
    """True when ``run``'s lease file holds ``token``: this process sees the folder its writer
    sees (a Dask worker on another node may see an empty local folder of the same name)."""
    held = Lease(run).holder()
    return held is not None and held.get("token") == token


@dataclass
class Lease:
    """The lease of ``run``; use as a context manager or ``acquire()`` / ``release()``."""

    run: RunFolder
    ttl: float = DEFAULT_TTL
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _renewer: threading.Thread | None = field(default=None, repr=False)
    _made_folder: bool = field(default=False, repr=False)

    @property
    def path(self) -> str:
        return self.run.local(LOCK_NAME)

    def record(self) -> dict:
        now = time.time()
        pid = os.getpid()
        return {"host": socket.gethostname(), "pid": pid, "pid_started": process_started(pid),
                "token": self.token, "expires": now + self.ttl,
                "taken": datetime.now(UTC).isoformat(timespec="seconds")}

    def acquire(self) -> None:
        """Take the lease or raise ``RunLocked`` naming its live holder."""
        self._made_folder = not self.run.fs.exists(self.run.path)
        try:
            self.run.makedirs()
        except (FileExistsError, NotADirectoryError):
            raise NotADirectoryError(f"{self.run.root} exists and is not a folder") from None
        for _ in range(3):
            created = self._create()
            held = None if created else self.holder()
            if created or (held is not None and held.get("token") == self.token):
                # ours either way: a store that wrote it but answered an error, and refused
                # the retried exclusive create, holds our own token
                self._start_renewing()
                return
            if held is not None and not holder_gone(held, time.time()):
                raise RunLocked(self._held_message(held))
            self._take_over(held)
        raise RunLocked(f"{self.run.root}: could not take the lease (other runs keep taking it)")

    def check(self) -> None:
        """Raise ``RunLocked`` now if a live run holds the folder (a cheap early look; the lease
        itself is taken by ``acquire``)."""
        if self.run.fs.exists(self.run.path) and not self.run.fs.isdir(self.run.path):
            raise NotADirectoryError(f"{self.run.root} exists and is not a folder")
        held = self.holder()
        if held is not None and not holder_gone(held, time.time()):
            raise RunLocked(self._held_message(held))

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        held = self.holder()
        if held is not None and held.get("token") == self.token:
            self.run.fs.rm(self.path)
        if self._made_folder and self.run.is_local and not os.listdir(self.run.path):
            os.rmdir(self.run.path)  # a run that failed before writing leaves no trace

    def holder(self) -> dict | None:
        try:
            with self.run.fs.open(self.path, "rb") as fh:
                return json.loads(fh.read() or b"{}")
        except (FileNotFoundError, NotADirectoryError):
            return None
        except json.JSONDecodeError:  # a holder caught mid-write: treat as held, expiring soon
            return {"expires": time.time() + 1.0}

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # ---- internals --------------------------------------------------------------------------

    def _held_message(self, held: dict) -> str:
        return (f"{self.run.root} is being written by another run (host {held.get('host')}, "
                f"pid {held.get('pid')}, since {held.get('taken')}); wait for it to end")

    def _payload(self) -> bytes:
        return json.dumps(self.record(), sort_keys=True).encode()

    def _create(self) -> bool:
        """Exclusive create; False when a lease file is already there."""
        if self.run.is_local:  # written whole aside, then linked: link fails if one exists
            aside = f"{self.path}.{self.token}"
            with open(aside, "wb") as fh:
                fh.write(self._payload())
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(aside, self.path)
                return True
            except FileExistsError:
                return False
            finally:
                os.unlink(aside)
        try:
            with self.run.fs.open(self.path, "xb") as fh:
                fh.write(self._payload())
            return True
        except FileExistsError:
            return False
        except (ValueError, NotImplementedError):  # no exclusive mode: write, pause, read back
            if self.run.fs.exists(self.path):
                return False
            with self.run.fs.open(self.path, "wb") as fh:
                fh.write(self._payload())
            time.sleep(0.5)
            held = self.holder()
            return held is not None and held.get("token") == self.token

    def _take_over(self, stale: dict | None) -> None:
        """Remove a stale lease, unless another run replaced it meanwhile."""
        if stale is None:
            return
        if self.run.is_local:  # rename is atomic: of two takers one moves it, the other fails
            aside = f"{self.path}.{self.token}"
            try:
                os.rename(self.path, aside)
            except FileNotFoundError:
                return
            with open(aside, "rb") as fh:
                moved = json.loads(fh.read() or b"{}")
            if moved.get("token") != stale.get("token"):
                try:  # we moved a fresh lease: put it back unless yet another one appeared
                    os.link(aside, self.path)
                except FileExistsError:
                    pass
            os.unlink(aside)
            return
        if (self.holder() or {}).get("token") == stale.get("token"):
            self.run.fs.rm(self.path)

    def _start_renewing(self) -> None:
        def renew() -> None:
            while not self._stop.wait(self.ttl / 4):
                held = self.holder()
                if held is None or held.get("token") != self.token:
                    return  # taken over after we stalled past expiry: stop touching it
                self.run.write_bytes_atomic(self._payload(), LOCK_NAME)

        self._renewer = threading.Thread(target=renew, name="fidoflow-lease", daemon=True)
        self._renewer.start()
