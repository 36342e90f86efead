"""Archive scale (issue 18): what orchestration costs beside the work at 10^4 and 10^5 images,
the flow process's memory, the run folder's files and the Prefect database per 10^4 images,
and the manifest stage at 10^6 and 10^7 rows.

    .venv/bin/python bench/scale.py --sections run --images 10000,100000 [--analysis]
    .venv/bin/python bench/scale.py --sections manifest --rows 1000000,10000000
    .venv/bin/python bench/scale.py --sections increment --images 100000 --added 10000
    .venv/bin/python bench/scale.py --sections relist --rows 1000000 --added 10000

``run``: a manifest of N rows naming N distinct paths, hard links to 1,000 small real photos
(crops of scikit-image's), explained with the cheapest method (``saliency``) by the synthetic
CNN through the whole ``fidoflow run`` command (its own Prefect server in a fresh
PREFECT_HOME, 2 local workers). Overhead = (wall − start-up) ÷ (task work ÷ workers), where
task work is the tasks' summed wall time on their workers (decode, explain, analysis, writes,
merges): 1.0 means scheduling and idle workers cost nothing. The flow process's resident memory
is sampled every 0.2 s. ``manifest``: prepare_run on a generated manifest (paths that need not
exist: nothing is opened) in a child process, its time and peak resident memory.
``increment`` (issue 32): a run of N images, then ``--added`` images more into the same folder
(the increment, timed like ``run``), then a run with nothing new. ``relist``: the increment's
listing alone, prepare_run of an N + added row manifest over a folder that holds N rows, in a
child process of its own (time and peak memory).

Every timing waits for a quiet machine (bench/quiet.py) and prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.quiet import load_average, machine, require_quiet

ROOT = Path(__file__).resolve().parent.parent
LINE = re.compile(r"\(([\d.]+) s of shard work, ([\d.]+) s of task work in (\d+) tasks")
STARTUP = re.compile(r"start-up: the first shard started ([\d.]+) s after the command")
ANALYSIS = re.compile(r"analysis: ([\d.]+) s of shard work")


def photos(folder: Path, files: int) -> list[Path]:
    """``files`` small real JPEGs: 48 × 64 crops of scikit-image's photos."""
    import numpy as np
    import skimage.data
    from PIL import Image

    folder.mkdir(parents=True)
    sources = [np.asarray(getattr(skimage.data, n)()) for n in
               ("chelsea", "coffee", "astronaut", "rocket", "immunohistochemistry")]
    rng = np.random.default_rng(0)
    out = []
    for i in range(files):
        src = sources[i % len(sources)]
        y, x = rng.integers(0, src.shape[0] - 48), rng.integers(0, src.shape[1] - 64)
        path = folder / f"{i}.jpg"
        Image.fromarray(src[y:y + 48, x:x + 64, :3]).save(path, quality=85)
        out.append(path)
    return out


def archive(folder: Path, images: int, files: int, first: int = 0) -> Path:
    """A manifest of ``images`` distinct paths (hard links to the photos) with labels; with
    ``first`` > 0 the archive's images from ``first`` on are added to those already there."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    originals = (photos(folder / "originals", files) if not first else
                 [folder / "originals" / f"{i}.jpg" for i in range(files)])
    links = folder / "images"
    for i in range(first, images):
        (links / f"{i // 1000:04d}").mkdir(parents=True, exist_ok=True)
        os.link(originals[i % files], links / f"{i // 1000:04d}" / f"{i}.jpg")
    table = pa.table({"path": [f"images/{i // 1000:04d}/{i}.jpg" for i in range(images)],
                      "label_name": [f"class-{i % 8}" for i in range(images)]})
    pq.write_table(table, folder / "manifest.parquet")
    return folder / "manifest.parquet"


def sample_rss(pid: int, peak: list[int], stop: threading.Event) -> None:
    """The largest resident set of process ``pid`` until ``stop``."""
    try:
        process = psutil.Process(pid)
        while not stop.wait(0.2):
            peak[0] = max(peak[0], process.memory_info().rss)
    except psutil.NoSuchProcess:
        pass


def run(source: Path, out: Path, home: Path, analysis: bool, workers: int) -> dict:
    """The whole command; wall, start-up, task work, the flow process's peak memory, files."""
    home.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    argv = [sys.executable, "-m", "fidoflow.flows.cli", "run", str(source), "--out", str(out),
            "--model", "synthetic-cnn", "--method", "saliency", "--workers", str(workers),
            *([] if analysis else ["--explain-only"])]
    began = time.perf_counter()
    cli = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    peak, stop = [0], threading.Event()
    watcher = threading.Thread(target=sample_rss, args=(cli.pid, peak, stop), daemon=True)
    watcher.start()
    stdout, stderr = cli.communicate()
    wall = time.perf_counter() - began
    stop.set()
    watcher.join()
    match = LINE.search(stdout)
    if cli.returncode or not match:
        raise SystemExit(f"fidoflow run failed: {stdout[-1500:]} {stderr[-1500:]}")
    startup = float(m.group(1)) if (m := STARTUP.search(stdout)) else 0.0  # no shard: none
    analysis_work = float(m.group(1)) if (m := ANALYSIS.search(stdout)) else 0.0
    task_work = float(match.group(2))
    files = sum(len(f) for _, _, f in os.walk(out))
    database = home / "prefect.db"
    return {"wall": round(wall, 1), "startup": startup, "tasks": int(match.group(3)),
            "explain_work": float(match.group(1)), "analysis_work": analysis_work,
            "task_work": task_work,
            "overhead": round((wall - startup) / (task_work / workers), 3) if task_work else None,
            "flow_peak_rss_mb": round(peak[0] / 2**20), "files": files,
            "masks_objects": sum(len(f) for _, _, f in os.walk(out / "masks.zarr")),
            "prefect_db_mb": round(database.stat().st_size / 2**20, 1)
            if database.exists() else None}


PREPARE = """
import json, sys, time
from fidoflow.pipeline.settings import RunSettings
from fidoflow.pipeline.stages import model_of, prepare_run

def peak_mb():  # VmHWM: this process's own peak (ru_maxrss keeps the forking parent's peak)
    with open("/proc/self/status") as fh:
        return round(next(int(l.split()[1]) for l in fh if l.startswith("VmHWM")) / 1024)

config = RunSettings(model="synthetic-cnn", method="saliency").to_config(sys.argv[1], sys.argv[2])
model_of(config)
base = peak_mb()
began = time.perf_counter()
config, shards = prepare_run(config)
print(json.dumps({"seconds": round(time.perf_counter() - began, 1), "shards": shards,
                  "increment": config.increment, "imports_rss_mb": base,
                  "peak_rss_mb": peak_mb()}))
"""


def generated_manifest(path: Path, rows: int) -> None:
    """``rows`` rows of ids, paths and label names, written in row groups of 10^6."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with pq.ParquetWriter(path, pa.schema([("image_id", pa.string()), ("path", pa.string()),
                                           ("label_name", pa.string())])) as writer:
        for start in range(0, rows, 1_000_000):
            index = range(start, min(start + 1_000_000, rows))
            writer.write_table(pa.table({
                "image_id": [f"img-{i:08d}" for i in index],
                "path": [f"images/{i // 1000:05d}/{i}.jpg" for i in index],
                "label_name": [f"class-{i % 200}" for i in index]}))


def manifest(rows: int, force: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "manifest.parquet"
        generated_manifest(source, rows)
        load = load_average() if force else require_quiet()
        done = subprocess.run([sys.executable, "-c", PREPARE, str(source), str(Path(tmp) / "run")],
                              capture_output=True, text=True, check=False, cwd=ROOT)
        if done.returncode:
            raise SystemExit(done.stderr[-2000:])
        return {"section": "manifest", "rows": rows, "load": round(load, 2),
                **json.loads(done.stdout)}


def increment(images: int, added: int, files: int, workers: int, force: bool) -> list[dict]:
    """A run of ``images``, the increment of ``added`` more, and one with nothing new, into
    one folder with one Prefect home each."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        source = archive(Path(tmp) / "archive", images, files)
        for step, total in (("first", images), ("increment", images + added),
                            ("nothing new", images + added)):
            if total > images and step == "increment":
                archive(Path(tmp) / "archive", total, files, first=images)
            load = load_average() if force else require_quiet()
            record = run(source, Path(tmp) / "run", Path(tmp) / f"home-{len(out)}", False,
                         workers)
            out.append({"section": "increment", "step": step, "images": total,
                        "load": round(load, 2), **record})
            print(json.dumps(out[-1]), flush=True)
    return out


def relist(rows: int, added: int, force: bool) -> dict:
    """The increment's listing of ``rows`` known paths and ``added`` new ones, measured in a
    process of its own after a first prepare of ``rows``."""
    with tempfile.TemporaryDirectory() as tmp:
        source, run_folder = Path(tmp) / "manifest.parquet", str(Path(tmp) / "run")
        generated_manifest(source, rows)
        first = subprocess.run([sys.executable, "-c", PREPARE, str(source), run_folder],
                               capture_output=True, text=True, check=False, cwd=ROOT)
        if first.returncode:
            raise SystemExit(first.stderr[-2000:])
        generated_manifest(source, rows + added)
        load = load_average() if force else require_quiet()
        done = subprocess.run([sys.executable, "-c", PREPARE, str(source), run_folder],
                              capture_output=True, text=True, check=False, cwd=ROOT)
        if done.returncode:
            raise SystemExit(done.stderr[-2000:])
        return {"section": "relist", "rows": rows, "added": added, "load": round(load, 2),
                "first": json.loads(first.stdout), **json.loads(done.stdout)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", default="run,manifest")
    parser.add_argument("--images", default="10000,100000")
    parser.add_argument("--rows", default="1000000,10000000")
    parser.add_argument("--added", type=int, default=10000,
                        help="images an increment adds (sections increment, relist)")
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--analysis", action="store_true", help="with the analysis stages")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--force", action="store_true",
                        help="time even when other jobs run (the figures are then no result)")
    args = parser.parse_args()
    print(json.dumps({"machine": machine()}), flush=True)
    wanted = args.sections.split(",")
    if "run" in wanted:
        for images in (int(n) for n in args.images.split(",")):
            with tempfile.TemporaryDirectory() as tmp:
                source = archive(Path(tmp) / "archive", images, args.files)
                for repeat in range(args.repeats):
                    load = load_average() if args.force else require_quiet()
                    record = run(source, Path(tmp) / f"run-{repeat}", Path(tmp) / f"home-{repeat}",
                                 args.analysis, args.workers)
                    print(json.dumps({"section": "run", "images": images,
                                      "analysis": args.analysis, "round": repeat,
                                      "load": round(load, 2), **record}), flush=True)
    if "manifest" in wanted:
        for rows in (int(n) for n in args.rows.split(",")):
            print(json.dumps(manifest(rows, args.force)), flush=True)
    if "increment" in wanted:
        for images in (int(n) for n in args.images.split(",")):
            increment(images, args.added, args.files, args.workers, args.force)
    if "relist" in wanted:
        for rows in (int(n) for n in args.rows.split(",")):
            print(json.dumps(relist(rows, args.added, args.force)), flush=True)


if __name__ == "__main__":
    main()
