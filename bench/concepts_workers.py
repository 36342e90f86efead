"""``fidoflow concepts`` with 1 and 2 local Dask workers, whole command, alternating (A B A B),
each into a fresh folder: what extracting and training on the cluster gains.

    .venv/bin/python bench/concepts_workers.py --archive fine/train --model fine/model/model.pt \
        --classes 4 --steps 500 --repeats 2

Prints one line per run (workers, seconds, the load average before it) and the medians.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", required=True)
    parser.add_argument("--model", required=True, help="a state_dict with its card beside it")
    parser.add_argument("--classes", type=int, default=4, help="the card's first N classes")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    card = yaml.safe_load(Path(args.model).with_suffix(".yaml").read_text())
    classes = ",".join(card["classes"][:args.classes])
    fidoflow = str(Path(sys.executable).with_name("fidoflow"))
    seconds: dict[int, list[float]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as scratch:
        env = {**os.environ, "PREFECT_HOME": f"{scratch}/prefect"}
        for _ in range(args.repeats):
            for workers in (1, 2):
                out = Path(scratch) / "concepts"
                shutil.rmtree(out, ignore_errors=True)
                load = os.getloadavg()[0]
                began = time.perf_counter()
                subprocess.run([fidoflow, "concepts", args.archive, "--model", args.model,
                                "--out", str(out), "--classes", classes, "--steps",
                                str(args.steps), "--device", "cpu", "--workers", str(workers)],
                               check=True, env=env, stdout=subprocess.DEVNULL)
                seconds[workers].append(time.perf_counter() - began)
                print(f"workers {workers}: {seconds[workers][-1]:.1f} s (load {load:.2f})",
                      flush=True)
    for workers, values in seconds.items():
        print(f"median, {workers} worker(s): {statistics.median(values):.1f} s")


if __name__ == "__main__":
    main()
