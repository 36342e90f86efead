"""The GPU run of bench/gpu_check.sh: generated images and the demo photos explained through
the real ``fidoflow run`` command on a device, with images/s, the GPU's memory peak and
bench/roofline.py's projection side by side.

    python3 bench/gpu_run.py --device cuda --images 2000

The images are synthetic birds at 224 px (pipeline/archive/synthetic.py) explained by the
default method (SCD with its default settings) with EfficientNet-Lite0, explain only; images/s
counts from the first task's start to the run's end (the start-up is printed apart). The memory
peak is nvidia-smi's largest ``memory.used`` sampled every 0.25 s.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINE = re.compile(r"(\d+) images, (\d+) errors \(([\d.]+) s of shard work, ([\d.]+) s of task "
                  r"work in (\d+) tasks")
STARTUP = re.compile(r"start-up: the first shard started ([\d.]+) s after the command")


def gpu_memory(peak: list[int], stop: threading.Event) -> None:
    """The largest memory.used (MiB) nvidia-smi reports until ``stop``."""
    if shutil.which("nvidia-smi") is None:
        return
    while not stop.wait(0.25):
        done = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"], capture_output=True, text=True, check=False)
        values = [int(v) for v in done.stdout.split() if v.strip().isdigit()]
        if values:
            peak[0] = max(peak[0], max(values))


def fidoflow(source: Path, out: Path, device: str, *options: str) -> dict:
    """One ``fidoflow run``: images, wall, start-up, throughput, GPU memory peak."""
    peak, stop = [0], threading.Event()
    watcher = threading.Thread(target=gpu_memory, args=(peak, stop), daemon=True)
    watcher.start()
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "fidoflow.flows.cli", "run", str(source),
                           "--out", str(out), "--device", device, "--explain-only", *options],
                          capture_output=True, text=True, check=False, cwd=ROOT,
                          env={k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"})
    wall = time.perf_counter() - began
    stop.set()
    watcher.join()
    match, startup = LINE.search(done.stdout), STARTUP.search(done.stdout)
    if done.returncode or not match:
        raise SystemExit(f"fidoflow run failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    images, seconds = int(match.group(1)), wall - float(startup.group(1))
    return {"images": images, "errors": int(match.group(2)), "tasks": int(match.group(5)),
            "wall_s": round(wall, 1), "startup_s": float(startup.group(1)),
            "images_per_s": round(images / max(seconds, 1e-9), 2),
            "gpu_memory_peak_mib": peak[0] or None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--images", type=int, default=2000)
    args = parser.parse_args()
    from fidoflow.pipeline.archive.demo import prepare_demo_archive
    from fidoflow.pipeline.archive.synthetic import write_archive
    from fidoflow.pipeline.methods import parse_methods

    with tempfile.TemporaryDirectory() as tmp:
        synthetic = write_archive(Path(tmp) / "birds", args.images, seed=9, size=224,
                                  small_objects=True)
        photos = prepare_demo_archive(Path(tmp) / "photos")
        results = {"device": args.device,
                   "synthetic": fidoflow(synthetic, Path(tmp) / "run-birds", args.device),
                   "photos": fidoflow(Path(photos), Path(tmp) / "run-photos", args.device)}
        scd = parse_methods("scd")["scd"].config  # the default method the runs used
        roofline = subprocess.run([sys.executable, "bench/roofline.py", "--force", "--samples",
                                   str(scd.samples), "--iterations", str(scd.iterations)],
                                  capture_output=True, text=True, check=False, cwd=ROOT)
        if roofline.returncode == 0:
            projection = json.loads(roofline.stdout)["projection"]
            results["roofline_images_per_s"] = {name: round(p["images_per_s"], 1)
                                                for name, p in projection.items()}
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
