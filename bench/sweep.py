"""Sweep FIDO hyper-parameters on the synthetic benchmark (never on the demo photos).

    .venv/bin/python bench/sweep.py --images 32 > sweep.json

Prints one JSON line per configuration; Grad-CAM first as the reference.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.quality import load_benchmark, score
from fidoflow.pipeline.methods.fido import Fido, FidoConfig
from fidoflow.pipeline.methods.gradcam import GradCam, GradCamConfig

GRID = {
    "lr": [0.1, 0.3, 1.0],
    "l1": [1.0, 4.0, 16.0],
    "tv": [2.0, 8.0, 32.0],  # on the mean over all neighbour pairs (2x the old sum of two means)
    "mask_size": [24],
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--grid", type=json.loads, default=None, help="JSON dict of lists")
    parser.add_argument("--fixed", type=json.loads, default={}, help="JSON dict of fixed params")
    args = parser.parse_args()
    bench = load_benchmark(args.images)
    ref = score(bench, GradCam(bench.model, GradCamConfig(bench.model.gradcam_layer)))
    print(json.dumps({"method": "gradcam", **ref}), flush=True)
    grid = args.grid or GRID
    for values in itertools.product(*grid.values()):
        params = {**args.fixed, **dict(zip(grid, values))}
        result = score(bench, Fido(bench.model, FidoConfig(**params)))
        print(json.dumps({"method": "fido", **params, **result}), flush=True)


if __name__ == "__main__":
    main()
