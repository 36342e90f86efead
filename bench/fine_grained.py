"""The field's own data (issue 19): what explaining detections as crops gains on camera-trap
frames, and which methods find the discriminative part on a CUB-shaped tree.

    .venv/bin/python bench/fine_grained.py [--frames 120] [--birds 96]

``traps``: generated frames with one small bird each (pipeline/archive/synthetic.py,
``write_camera_traps``; the bird is a 96-px-scale bird in a 192 × 192 frame), explained by SCD
with the synthetic CNN once as whole frames and once on the square crops of the birds' boxes
(``--crop boxes``, the mechanism MegaDetector detections use): the classifier's top-1 accuracy
(the re-classification baseline: the whole view) and SCD's mean share of its map near the wing
patch (the discriminative part), each with a 95 % bootstrap CI. ``parts``: a CUB-shaped tree
of small birds explained on their box crops by every method; per method the mean share near
each part. Quality only (no timing): stage functions in this process.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fidoflow.pipeline import stages
from fidoflow.pipeline.analysis.aggregate import BootstrapConfig, bootstrap_ci
from fidoflow.pipeline.analysis.evaluate import EvaluateConfig
from fidoflow.pipeline.archive.synthetic import write_camera_traps, write_cub_tree
from fidoflow.pipeline.config import AnalysisConfig, RunConfig
from fidoflow.pipeline.methods import parse_methods
from fidoflow.storage import parts, tables
from fidoflow.storage.runfolder import RunFolder

ANALYSIS = AnalysisConfig(evaluate=EvaluateConfig(steps=10), gallery=0, flips=0)
METHODS = ("scd,cd,gradcam,ig,saliency,smoothgrad,occlusion:window=16:stride=8,rise:masks=500,"
           "extremal:iterations=100,igos:iterations=8,sag")


def run(source: Path, root: Path, methods: str, crop: str, mask_size: int = 28) -> RunFolder:
    return stages.run_in_process(RunConfig(
        source=str(source), root=str(root), model="synthetic-cnn", methods=parse_methods(methods),
        mask_size=mask_size, workers=1, batch_size=8, crop=crop), ANALYSIS)


def ci(values: np.ndarray) -> str:
    mean, low, high, n = bootstrap_ci(values, BootstrapConfig())
    return f"{mean[0]:.3f} [{low[0]:.3f}, {high[0]:.3f}] (n = {n[0]})"


def traps(frames: int, tmp: Path) -> dict:
    root = write_camera_traps(tmp / "traps", frames, seed=5)
    truth = pq.read_table(root / "truth.parquet").to_pandas()
    single = truth[truth.path.isin(truth.path.value_counts()[lambda c: c == 1].index)]
    pq.write_table(pa.Table.from_pandas(single, preserve_index=False), root / "single.parquet")
    out = {"frames": len(single)}
    for crop in ("none", "boxes"):
        folder = run(root / "single.parquet", tmp / f"traps-{crop}", "scd", crop)
        base = parts.read_parts(folder, tables.RECLASSIFY).to_pandas()
        base = base[base.method == "none"]
        shares = parts.read_parts(folder, tables.PARTS).to_pandas()
        wing = shares[shares.part == "left wing"]["share"].to_numpy(dtype=float)
        out[crop] = {"top1": ci(base.correct.astype(float).to_numpy()), "wing_share": ci(wing)}
    return out


def cub(birds: int, tmp: Path) -> dict:
    tree = write_cub_tree(tmp / "CUB_200_2011", birds, seed=6, size=160, small_objects=True)
    folder = run(tree, tmp / "cub", METHODS, "boxes")
    table = parts.read_parts(folder, tables.PARTS).to_pandas()
    means = table.groupby(["method", "part"])["share"].mean().unstack()
    return {"birds": birds, "mean_share": json.loads(means.round(3).to_json(orient="index")),
            "top_part": means.idxmax(axis=1).to_dict()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--birds", type=int, default=96)
    parser.add_argument("--sections", default="traps,parts")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if "traps" in args.sections:
            print(json.dumps({"section": "traps", **traps(args.frames, Path(tmp))}), flush=True)
        if "parts" in args.sections:
            print(json.dumps({"section": "parts", **cub(args.birds, Path(tmp))}), flush=True)


if __name__ == "__main__":
    main()
