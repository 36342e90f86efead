"""Operations benchmark (issue 9): the pipeline's overhead over its shards' own work at 256
small images with 1 and 2 workers, and the manifest/prepare stage on a generated manifest of
1,000,000 rows (no decoding), with its peak memory.

    .venv/bin/python bench/operations.py [--sections overhead,prepare] [--repeats 3] [--force]

Every timing waits for a quiet machine (bench/quiet.py) and prints one JSON line; the sides
alternate (1 worker, 2 workers, 1, 2, ...). Overhead = wall time of the whole `fidoflow run`
command ÷ (the shards' summed wall time on their workers ÷ workers): 1.0 would mean start-up,
scheduling and idle workers cost nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.quiet import alternate, machine, medians, require_quiet

ROOT = Path(__file__).resolve().parent.parent
SHARD_LINE = re.compile(r"\(([\d.]+) s of shard work, ")


def fidoflow_run(source: Path, out: Path, *options: str) -> dict:
    """The whole command as a user types it; its wall time and its shards' summed time."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "fidoflow.flows.cli", "run", str(source), "--out",
                           str(out), *options], capture_output=True, text=True, env=env,
                          check=False, cwd=ROOT)
    wall = time.perf_counter() - began
    match = SHARD_LINE.search(done.stdout)
    if done.returncode or not match:
        raise SystemExit(f"fidoflow run failed: {done.stderr[-2000:]}")
    return {"seconds": wall, "shard_seconds": float(match.group(1))}


def overhead(images: int, repeats: int, force: bool) -> dict:
    from fidoflow.pipeline.archive.synthetic import write_archive

    with tempfile.TemporaryDirectory() as tmp:
        archive = write_archive(Path(tmp) / "scenes", images, seed=11)
        options = ["--model", "synthetic-cnn", "--explain-only", "--iterations", "5",
                   "--samples", "2"]
        runs = iter(range(10_000))

        def side(workers: int):
            def run() -> dict:
                record = fidoflow_run(archive, Path(tmp) / f"run-{next(runs)}", *options,
                                      "--workers", str(workers))
                record["overhead"] = record["seconds"] / (record["shard_seconds"] / workers)
                return record
            return run

        results = alternate({"1 worker": side(1), "2 workers": side(2)}, repeats, force,
                            report=lambda r: print(json.dumps(r), flush=True))
    return {"section": "overhead", "images": images, "settings": "synthetic-cnn (96²), scd, "
            "B 2, 5 steps, mask 28, --explain-only: little work per image, so the overhead shows",
            "seconds": medians(results), "overhead": medians(results, "overhead"),
            "runs": results}


def write_manifest(folder: Path, rows: int, files: int) -> Path:
    """``rows`` manifest rows over ``files`` small real JPEGs (each file named by many rows)."""
    import numpy as np
    import pandas as pd
    from PIL import Image

    images = folder / "files"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(files):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(
            images / f"{i}.jpg", quality=80)
    index = np.arange(rows)
    frame = pd.DataFrame({"image_id": [f"img-{i:07d}" for i in index],
                          "path": [f"files/{i % files}.jpg" for i in index],
                          "label_name": [f"class-{i % 200}" for i in index]})
    manifest = folder / "manifest.parquet"
    frame.to_parquet(manifest)
    return manifest


PREPARE = """
import json, sys, time
from fidoflow.pipeline.settings import RunSettings
from fidoflow.pipeline.stages import prepare_run
config = RunSettings(model="synthetic-cnn").to_config(sys.argv[1], sys.argv[2])
began = time.perf_counter()
_, shards = prepare_run(config)
print(json.dumps({"seconds": time.perf_counter() - began, "shards": shards}))
"""


def prepare(rows: int, files: int, repeats: int, force: bool) -> dict:
    """prepare_run (read, check and describe every row, map labels, write manifest.parquet and
    the mask store) in a child process: its time and its peak resident memory."""
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        manifest = write_manifest(Path(tmp), rows, files)
        for i in range(repeats):
            load = os.getloadavg()[0] if force else require_quiet()
            before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            done = subprocess.run([sys.executable, "-c", PREPARE, str(manifest),
                                   str(Path(tmp) / f"run-{i}")], capture_output=True, text=True,
                                  check=False, cwd=ROOT)
            if done.returncode:
                raise SystemExit(done.stderr[-2000:])
            peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            record = {"round": i, "load": round(load, 2), **json.loads(done.stdout),
                      "peak_rss_mb": round(max(peak, before) / 1024)}
            print(json.dumps(record), flush=True)
            records.append(record)
    times = sorted(r["seconds"] for r in records)
    return {"section": "prepare", "rows": rows, "files": files,
            "seconds_median": times[len(times) // 2],
            "peak_rss_mb": max(r["peak_rss_mb"] for r in records), "runs": records}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", default="overhead,prepare")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--force", action="store_true",
                        help="time even when other jobs run (the figures are then no result)")
    args = parser.parse_args()
    print(json.dumps({"machine": machine()}), flush=True)
    wanted = args.sections.split(",")
    if "overhead" in wanted:
        print(json.dumps(overhead(args.images, args.repeats, args.force)), flush=True)
    if "prepare" in wanted:
        print(json.dumps(prepare(args.rows, args.files, args.repeats, args.force)), flush=True)


if __name__ == "__main__":
    main()
