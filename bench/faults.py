"""Faults at archive scale (issue 33): what a fault costs a run, measured on the whole command.

    .venv/bin/python bench/faults.py --images 10000 [--fault api-server,worker]

For each fault: the same ``fidoflow run`` (synthetic CNN, ``saliency``, explain-only, 2 local
workers, its own Prefect server), undisturbed and with the fault injected once a fifth of the
shards are done, alternating (A B A B), ``--repeats`` rounds. ``api-server``: SIGKILL of the
run's private Prefect API server; ``worker``: SIGKILL of one Dask worker process. Reported:
wall seconds of both, seconds from the fault until the run had noticed it (the log line that
says so), the lines the terminal got (stderr), and whether every image has exactly one row.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.quiet import load_average, machine, require_quiet
from bench.scale import archive

ROOT = Path(__file__).resolve().parent.parent
NOTICED = {"api-server": re.compile(r"Prefect API server \(pid \d+\) ended"),
           "worker": re.compile(r"the worker running it died")}


def victim(cli: psutil.Process, fault: str) -> psutil.Process | None:
    """The process the fault kills: the run's API server, or one Dask worker."""
    marker = "fidoflow.flows.server" if fault == "api-server" else "forkserver"
    for child in cli.children(recursive=True):
        try:
            line = " ".join(child.cmdline())
        except psutil.NoSuchProcess:
            continue
        if marker in line and (fault == "api-server" or child.children() == []):
            return child
    return None


def one_run(source: Path, out: Path, home: Path, fault: str | None, shards: int) -> dict:
    home.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    argv = [sys.executable, "-m", "fidoflow.flows.cli", "run", str(source), "--out", str(out),
            "--model", "synthetic-cnn", "--method", "saliency", "--explain-only",
            "--task-size", "64"]
    began = time.perf_counter()
    cli = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, start_new_session=True)
    injected = None
    if fault:
        while cli.poll() is None and injected is None:
            done = len(list((out / "predictions").glob("part-*"))) if out.exists() else 0
            target = victim(psutil.Process(cli.pid), fault) if done >= shards // 5 else None
            if target is not None:
                target.send_signal(signal.SIGKILL)
                injected = time.time()
            time.sleep(0.2)
    _, stderr = cli.communicate()
    wall = time.perf_counter() - began
    logged = home / "fidoflow.log"
    log = logged.read_text(errors="replace") if logged.exists() else ""
    noticed = None
    if injected is not None:
        for line in log.splitlines():
            if fault and NOTICED[fault].search(line):
                stamp = time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S"))
                noticed = round(stamp + int(line[20:23]) / 1000 - injected, 1)  # ",mmm"
                break
    import pyarrow.parquet as pq

    ids = pq.read_table(out / "manifest.parquet", columns=["image_id"])["image_id"].to_pylist()
    predicted = pq.read_table(out / "predictions", columns=["image_id"])["image_id"].to_pylist()
    return {"fault": fault or "none", "status": cli.returncode, "wall": round(wall, 1),
            "noticed_s": noticed, "terminal_lines": len(stderr.strip().splitlines()),
            "rows_once": sorted(ids) == sorted(predicted), "images": len(ids)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--fault", default="api-server,worker")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    print(json.dumps({"machine": machine()}), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        source = archive(Path(tmp) / "archive", args.images, 1000)
        shards = -(-args.images // 16)
        for fault in args.fault.split(","):
            for repeat in range(args.repeats):
                for side in (None, fault):
                    load = load_average() if args.force else require_quiet()
                    name = f"{fault}-{side or 'none'}-{repeat}"
                    record = one_run(source, Path(tmp) / name, Path(tmp) / f"home-{name}", side,
                                     shards)
                    print(json.dumps({"load": round(load, 2), **record}), flush=True)


if __name__ == "__main__":
    main()
