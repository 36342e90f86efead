"""Faults at archive scale (issue 33): what a fault costs a run, measured on the whole command.

    .venv/bin/python bench/faults.py --images 10000 [--fault api-server,worker,external-api,scheduler]

For each fault: the same ``fidoflow run`` (synthetic CNN, ``saliency``, explain-only,
``--task-size 64``), undisturbed and with the fault injected once part files for a fifth of the
shards are written (a task of 4 shards writes one file: that is 4/5 of the run), alternating
(A B A B), ``--repeats`` rounds:
- ``api-server``: SIGKILL of the run's private Prefect API server (2 local workers);
- ``worker``: SIGKILL of one Dask worker process (2 local workers);
- ``external-api``: the ``prefect server start`` the run reports to (``PREFECT_API_URL``)
  stopped, and started again 15 s later on its database;
- ``scheduler``: SIGKILL of the ``dask scheduler`` of ``--dask-address`` (2 ``dask worker``
  processes); the run is then rerun against a new scheduler.
Reported: wall seconds, seconds from the fault until the run had noticed it (the log line that
says so, or the command's end for a fault that ends it), tasks run again, the lines the
terminal got (stderr), and whether every image has exactly one row in the end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.quiet import load_average, machine, require_quiet
from bench.scale import archive

ROOT = Path(__file__).resolve().parent.parent
NOTICED = {"api-server": re.compile(r"Prefect API server \(pid \d+\) ended"),
           "worker": re.compile(r"the worker running it died")}
RAN_AGAIN = re.compile(r"the worker running it died")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def healthy(url: str, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            time.sleep(0.3)
    raise SystemExit(f"nothing answers at {url}")


def prefect_server(port: int, env: dict) -> subprocess.Popen:
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host",
                               "127.0.0.1", "--port", str(port), "--no-ui"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    healthy(f"http://127.0.0.1:{port}/api/health", server)
    return server


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        os.killpg(process.pid, sig)
        process.wait(30)


@contextmanager
def dask_cluster(env: dict) -> Iterator[tuple[str, subprocess.Popen]]:
    """A ``dask scheduler`` and two one-thread ``dask worker`` processes on loopback."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    started = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler",
                                 "--host", "127.0.0.1", "--port", str(port),
                                 "--dashboard-address", "127.0.0.1:0"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)]
    started += [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address,
                                  "--nthreads", "1", "--host", "127.0.0.1",
                                  "--dashboard-address", "127.0.0.1:0"], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 start_new_session=True) for _ in range(2)]
    from distributed import Client

    with Client(address, timeout=60) as client:
        client.wait_for_workers(2, timeout=60)
    try:
        yield address, started[0]
    finally:
        for process in reversed(started):
            stop(process)


def victim(cli: psutil.Process, fault: str) -> psutil.Process | None:
    """The process a local fault kills: the run's API server, or one Dask worker."""
    marker = "fidoflow.flows.server" if fault == "api-server" else "forkserver"
    for child in cli.children(recursive=True):
        try:
            line = " ".join(child.cmdline())
        except psutil.NoSuchProcess:
            continue
        if marker in line and (fault == "api-server" or child.children() == []):
            return child
    return None


@contextmanager
def setting(kind: str, env: dict) -> Iterator[dict]:
    """What a run measured for a ``kind`` of fault (either side) reports to and runs on:
    ``env``, the CLI's extra arguments, and the processes the fault stops."""
    if kind == "external-api":
        port = free_port()
        env = env | {"PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
        server = prefect_server(port, env)
        box = {"env": env, "argv": [], "server": server, "port": port}
        try:
            yield box
        finally:
            stop(box["server"])
    elif kind == "scheduler":
        with dask_cluster(env) as (address, scheduler):
            yield {"env": env, "argv": ["--dask-address", address], "scheduler": scheduler}
    else:
        yield {"env": env, "argv": []}


def inject(fault: str, cli: subprocess.Popen, box: dict) -> float | None:
    """The fault, now; the time it was injected (None when its process is not there yet)."""
    if fault in ("api-server", "worker"):
        target = victim(psutil.Process(cli.pid), fault)
        if target is None:
            return None
        target.send_signal(signal.SIGKILL)
    elif fault == "external-api":
        stop(box["server"])
        injected = time.time()
        time.sleep(15)
        box["server"] = prefect_server(box["port"], box["env"])
        return injected
    else:
        stop(box["scheduler"], signal.SIGKILL)
    return time.time()


def one_run(source: Path, out: Path, home: Path, kind: str, fault: str | None,
            shards: int) -> dict:
    home.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    argv = [sys.executable, "-m", "fidoflow.flows.cli", "run", str(source), "--out", str(out),
            "--model", "synthetic-cnn", "--method", "saliency", "--explain-only",
            "--task-size", "64"]
    record: dict = {"fault": fault or "none", "kind": kind}
    with setting(kind, env) as box:
        began = time.perf_counter()
        cli = subprocess.Popen([*argv, *box["argv"]], env=box["env"], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
        injected = None
        while fault and cli.poll() is None and injected is None:
            done = len(list((out / "predictions").glob("part-*"))) if out.exists() else 0
            if done >= shards // 5:
                injected = inject(fault, cli, box)
            time.sleep(0.2)
        _, stderr = cli.communicate()
        ended = time.time()
        record |= {"status": cli.returncode, "wall": round(time.perf_counter() - began, 1),
                   "terminal_lines": len(stderr.strip().splitlines()),
                   "first_line": (stderr.strip().splitlines() or [""])[0][:160]}
    logged = home / "fidoflow.log"
    log = logged.read_text(errors="replace") if logged.exists() else ""
    record["tasks_run_again"] = len(RAN_AGAIN.findall(log))
    if injected is not None:
        record["noticed_s"] = round(ended - injected, 1) if cli.returncode else None
        for line in log.splitlines():
            if fault in NOTICED and NOTICED[fault].search(line):
                stamp = time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S"))
                record["noticed_s"] = round(stamp + int(line[20:23]) / 1000 - injected, 1)
                break
    if fault == "scheduler":  # the rerun against a new scheduler
        with setting(kind, env) as box:
            began = time.perf_counter()
            rerun = subprocess.run([*argv, *box["argv"]], env=box["env"], cwd=ROOT,
                                   capture_output=True, text=True, check=False)
            found = re.search(r"(\d+) images, (\d+) errors", rerun.stdout)
            record |= {"rerun_status": rerun.returncode,
                       "rerun_wall": round(time.perf_counter() - began, 1),
                       "rerun_images": int(found.group(1)) if found else None}
    import pyarrow.parquet as pq

    ids = pq.read_table(out / "manifest.parquet", columns=["image_id"])["image_id"].to_pylist()
    predicted = pq.read_table(out / "predictions", columns=["image_id"])["image_id"].to_pylist()
    return record | {"rows_once": sorted(ids) == sorted(predicted), "images": len(ids)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--fault", default="api-server,worker,external-api,scheduler")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    print(json.dumps({"machine": machine()}), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        source = archive(Path(tmp) / "archive", args.images, 1000)
        shards = -(-args.images // 16)
        for kind in args.fault.split(","):
            for repeat in range(args.repeats):
                for side in (None, kind):
                    load = load_average() if args.force else require_quiet()
                    name = f"{kind}-{side or 'none'}-{repeat}"
                    record = one_run(source, Path(tmp) / name, Path(tmp) / f"home-{name}", kind,
                                     side, shards)
                    print(json.dumps({"load": round(load, 2), **record}), flush=True)


if __name__ == "__main__":
    main()
