"""``fidoflow concepts`` at CUB's size (issue 34, item 5): 10⁴ generated scenes in 200 class
folders, a 200-class synthetic CNN (untrained: the cost of learning concepts does not depend on
what the weights say), the whole command with its own Prefect server and local workers.

    .venv/bin/python bench/concepts_scale.py --images 10000 --classes 200 --steps 300

Prints one JSON line: wall seconds, the peak resident memory of the flow process and of each
kind of child (the Dask workers, the API server) sampled every 0.2 s, and the files written
under the concepts folder by kind. The scenes are the fine benchmark's (wing and crown), their
folder is ``i % classes``: what a class is made of does not change what the stage costs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import psutil
import torch
import yaml
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.quiet import machine, require_quiet
from fidoflow.pipeline.archive.synthetic import DEFAULT_SIZE, make_scene
from fidoflow.pipeline.models.loading import build_architecture

ARCHITECTURE = "fidoflow:synthetic-cnn"


def class_name(label: int) -> str:
    return f"class-{label:03d}"


def write_scenes(root: Path, images: int, classes: int, seed: int = 21) -> None:
    """``images`` fine scenes (one at a time: 10⁴ of them at once would take 1 GB), PNG in
    ``root/class-XXX/``."""
    streams = np.random.SeedSequence(seed).spawn(images)
    for i, stream in enumerate(streams):
        scene = make_scene(np.random.default_rng(stream), i % 24, DEFAULT_SIZE, fine=True)
        folder = root / class_name(i % classes)
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (scene.image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{seed}-{i:06d}.png")


def write_model(folder: Path, classes: int) -> Path:
    """An untrained ``classes``-way synthetic CNN as a state_dict with its card."""
    torch.manual_seed(0)
    net = build_architecture(ARCHITECTURE, classes).net
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.pt"
    torch.save(net.state_dict(), path)
    card = {"architecture": ARCHITECTURE, "classes": [class_name(c) for c in range(classes)],
            "input_size": DEFAULT_SIZE}
    path.with_suffix(".yaml").write_text(yaml.safe_dump(card))
    return path


def kind_of(process: psutil.Process) -> str:
    line = " ".join(process.cmdline())
    if "fidoflow.flows.server" in line or "uvicorn" in line:
        return "api-server"
    if "forkserver" in line or "spawn_main" in line or "dask" in line:
        return "dask"
    return "other"


def sample(pid: int, peaks: dict[str, int], stop: threading.Event) -> None:
    """Peak resident memory of the flow process and of each child kind (the largest single
    process of the kind), until ``stop``."""
    root = psutil.Process(pid)
    while not stop.wait(0.2):
        try:
            peaks["flow"] = max(peaks["flow"], root.memory_info().rss)
            for child in root.children(recursive=True):
                try:
                    kind = kind_of(child)
                    peaks[kind] = max(peaks[kind], child.memory_info().rss)
                except psutil.NoSuchProcess:
                    continue
        except psutil.NoSuchProcess:
            return


def files_written(out: Path) -> dict[str, list[int]]:
    """Per kind of file under ``out``: [count, MB]."""
    kinds: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for path in out.rglob("*"):
        if path.is_file():
            relative = path.relative_to(out)
            stem = relative.stem.split("-")[0]
            kind = (relative.parent / (f"{stem}-*" if "-" in relative.stem
                                       else relative.name)).as_posix()
            kinds[kind][0] += 1
            kinds[kind][1] += path.stat().st_size / 2**20
    return {k: [int(n), round(mb, 1)] for k, (n, mb) in sorted(kinds.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--classes", type=int, default=200)
    parser.add_argument("--steps", type=int, default=300, help="Adam steps per XNN")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--keep", help="a folder to keep the archive, model and concepts in")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        base = Path(args.keep or scratch)
        archive, model = base / "archive", base / "model" / "model.pt"
        if not archive.exists():
            began = time.perf_counter()
            write_scenes(archive, args.images, args.classes)
            print(json.dumps({"scenes_written_s": round(time.perf_counter() - began, 1)}))
        if not model.exists():
            write_model(model.parent, args.classes)
        out, home = base / "concepts", base / "prefect"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env |= {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        load = require_quiet()
        argv = [sys.executable, "-m", "fidoflow.flows.cli", "concepts", str(archive),
                "--model", str(model), "--out", str(out), "--steps", str(args.steps),
                "--workers", str(args.workers), "--device", "cpu", "--format", "imagefolder"]
        began = time.perf_counter()
        cli = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
        peaks: Counter[str] = Counter(flow=0, dask=0)
        stop = threading.Event()
        watcher = threading.Thread(target=sample, args=(cli.pid, peaks, stop), daemon=True)
        watcher.start()
        output, _ = cli.communicate()
        wall = time.perf_counter() - began
        stop.set()
        watcher.join()
        if cli.returncode:
            raise SystemExit(f"fidoflow concepts failed:\n{output[-3000:]}")
        card = json.loads((out / "concepts.json").read_text())
        print(json.dumps({**machine(), "load_before": round(load, 2),
                          "load_after": round(os.getloadavg()[0], 2), "images": args.images,
                          "classes": len(card["classes"]), "steps": args.steps,
                          "workers": args.workers, "wall_s": round(wall, 1),
                          "peak_rss_mb": {k: round(v / 2**20) for k, v in peaks.items()},
                          "files": files_written(out)}))
        print(output[-1200:], file=sys.stderr)


if __name__ == "__main__":
    main()
