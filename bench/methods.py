"""Every registered method side by side (issue 10): one command, one table.

    .venv/bin/python bench/methods.py [--methods scd,cd,...] [--scenes 16] [--force]

Two sets, each method at its registered defaults, explained the way a run explains a shard
(the prepared classifier, the run's batching: FIDO one image per step on a CPU, the others
their own batches):
- **synthetic**: held-out scenes of the synthetic fine-grained benchmark and its classifier
  (96²), the true class: share of the map's mass on the discriminative part, pointing game
  (peak within 15 px of the part), deletion and insertion AUC (32 steps, blur baseline);
- **photos**: scikit-image's demo photos with EfficientNet-Lite0 (224²), the predicted class:
  deletion and insertion AUC, and the share inside the objects boxed by hand (cup, rocket,
  motorcycle: the three photos whose object fills only part of the frame).
Seconds per image are each method's own explain time; each row carries the load average it
was taken at and waits for a quiet machine (bench/quiet.py) unless --force. FIDO's rows add the
worst image's SSR keep (p under the deterministic SSR blend ÷ clean p; below 0.5 the mask failed).
`fido-public` (the public code's setting) keeps a full-resolution mask on the synthetic scenes too.
Rows no other row beats on every photo column (share, deletion, insertion, seconds) are marked ◆:
the Pareto front of issue 11.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.engine import PHOTO_OBJECTS
from bench.quality import load_benchmark
from bench.quiet import load_average, machine, require_quiet
from fidoflow.pipeline.archive.demo import DEMO_PHOTOS
from fidoflow.pipeline.methods.registry import MethodSpec, describe, parse_methods
from fidoflow.pipeline.metrics.box import share_inside
from fidoflow.pipeline.metrics.deletion_insertion import deletion_insertion
from fidoflow.pipeline.metrics.pointing import pointing_game
from fidoflow.pipeline.models.device import default_batch_size

CPU = torch.device("cpu")
COLUMNS = ("share", "pointing", "deletion", "insertion", "sec_per_image")


def explain(spec: MethodSpec, model: torch.nn.Module, images: torch.Tensor,
            targets: torch.Tensor, force: bool, seed: int = 0) -> tuple[torch.Tensor, dict]:
    """The joint maps and the row's common fields: seconds per image, the load average before
    the timing and, for FIDO, the worst image's SSR keep. Image i draws with seed ``seed + i``
    (another ``--seed``: the same table under other random draws, i.e. its noise)."""
    load = load_average() if force else require_quiet()
    began = time.perf_counter()
    with spec.build(model) as method:
        out = method.attribute(images, targets, list(range(seed, seed + len(images))),
                               default_batch_size(CPU))
    fields = {"load": round(load, 2), "sec_per_image": (time.perf_counter() - began) / len(images),
              "worst_keep": None}
    if "p_ssr" in out.scalars:
        with torch.no_grad():
            clean = model(images).softmax(dim=1).gather(1, targets[:, None])[:, 0]
        fields["worst_keep"] = (out.scalars["p_ssr"].float() / clean).min().item()
    return out.maps["joint"].float(), fields


def full_resolution(spec: MethodSpec, side: int) -> MethodSpec:
    """``fido-public``'s mask is as large as the input, whatever the input."""
    if spec.kind != "fido-public":
        return spec
    return dataclasses.replace(spec, config=dataclasses.replace(spec.config, mask_size=side))


def synthetic_rows(specs: dict[str, MethodSpec], scenes: int, force: bool,
                   seed: int = 0) -> list[dict]:
    bench = load_benchmark(scenes)
    data = bench.data
    rows = []
    for name, spec in specs.items():
        spec = full_resolution(spec, data.images.shape[-1])
        maps, fields = explain(spec, bench.model, data.images, data.labels, force, seed)
        curves = deletion_insertion(bench.model, data.images, maps, data.labels, steps=32)
        rows.append({"set": "synthetic", "method": name, **fields,
                     "share": share_inside(maps, data.part_masks.float()).nanmean().item(),
                     "pointing": pointing_game(maps, data.part_masks.bool()).float().mean().item(),
                     "deletion": curves.deletion_auc.mean().item(),
                     "insertion": curves.insertion_auc.mean().item()})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def demo_photos(input_size: tuple[int, int]) -> tuple[torch.Tensor, dict[int, list[float]]]:
    """The demo photos at the model's input size, and the hand-drawn boxes (scaled) by index."""
    import skimage.data
    from PIL import Image

    from fidoflow.pipeline.imaging.decode import to_tensor

    images, boxes = [], {}
    for i, name in enumerate(DEMO_PHOTOS):
        pixels = getattr(skimage.data, name)()
        pixels = pixels[0] if isinstance(pixels, tuple) else pixels  # a stereo pair: the left view
        images.append(to_tensor(Image.fromarray(pixels), input_size))
        if name in PHOTO_OBJECTS:
            x0, y0, x1, y1 = PHOTO_OBJECTS[name]
            sx, sy = input_size[1] / pixels.shape[1], input_size[0] / pixels.shape[0]
            boxes[i] = [x0 * sx, y0 * sy, x1 * sx, y1 * sy]
    return torch.stack(images), boxes


def photo_rows(specs: dict[str, MethodSpec], force: bool, seed: int = 0) -> list[dict]:
    from fidoflow.pipeline.models.loading import load_model

    loaded = load_model()
    model = loaded.on(CPU)
    images, boxes = demo_photos(loaded.input_size)
    with torch.no_grad():
        targets = model(images).argmax(dim=1)
    boxed = list(boxes)
    rows = []
    for name, spec in specs.items():
        spec = full_resolution(spec, images.shape[-1])
        maps, fields = explain(spec, model, images, targets, force, seed)
        curves = deletion_insertion(model, images, maps, targets, steps=32)
        inside = share_inside(maps[boxed], torch.tensor([boxes[i] for i in boxed]),
                              tuple(loaded.input_size))
        rows.append({"set": "photos", "method": name, **fields,
                     "share": inside.mean().item(), "pointing": None,
                     "deletion": curves.deletion_auc.mean().item(),
                     "insertion": curves.insertion_auc.mean().item()})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def pareto(rows: list[dict]) -> set[str]:
    """Methods of the photo rows that no other photo row matches or beats on share, deletion,
    insertion and seconds at once (better on one)."""
    photos = [r for r in rows if r["set"] == "photos"]
    signs = {"share": 1, "deletion": -1, "insertion": 1, "sec_per_image": -1}

    def beats(a: dict, b: dict) -> bool:
        at_least = all(signs[c] * a[c] >= signs[c] * b[c] for c in signs)
        return at_least and any(signs[c] * a[c] > signs[c] * b[c] for c in signs)

    return {r["method"] for r in photos if not any(beats(o, r) for o in photos if o is not r)}


def table(rows: list[dict]) -> str:
    """Markdown: one row per method, the synthetic and the photo columns side by side."""
    by = {(r["set"], r["method"]): r for r in rows}
    methods = list(dict.fromkeys(r["method"] for r in rows))
    front = pareto(rows)
    head = ("| method | share on part ↑ | pointing ↑ | deletion ↓ | insertion ↑ | s / image "
            "| photos: share in box ↑ | deletion ↓ | insertion ↑ | s / image | worst SSR keep ↑ "
            "| loads |")
    lines = [head, "|" + "---|" * 12]

    def cells(row: dict | None, names: tuple[str, ...]) -> list[str]:
        if row is None:
            return ["–"] * len(names)
        return ["–" if row[c] is None else (f"{row[c]:.2f}" if c in ("sec_per_image", "worst_keep")
                                             else f"{row[c]:.3f}") for c in names]

    for method in methods:
        synthetic, photos = by.get(("synthetic", method)), by.get(("photos", method))
        loads = sorted({r["load"] for r in (synthetic, photos) if r})
        mark = " ◆" if method in front else ""
        lines.append(f"| {method}{mark} | " + " | ".join(
            cells(synthetic, COLUMNS) + cells(photos, ("share", "deletion", "insertion",
                                                       "sec_per_image", "worst_keep"))
            + ["–".join(f"{x:.2f}" for x in (loads[0], loads[-1]))]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    kinds = [entry["kind"] for entry in describe() if entry["kind"] != "sag"]
    parser.add_argument("--methods", default=",".join(kinds),
                        help="method instances, as `fidoflow run --method` takes them "
                             "(default: every registered kind but sag, bench/sag.py)")
    parser.add_argument("--scenes", type=int, default=16, help="synthetic scenes")
    parser.add_argument("--sets", default="synthetic,photos")
    parser.add_argument("--seed", type=int, default=0, help="image i draws with seed + i")
    parser.add_argument("--rows", default=None, metavar="JSONL", help="also append rows here")
    parser.add_argument("--force", action="store_true",
                        help="time even when other jobs run (seconds are then no result)")
    args = parser.parse_args()
    torch.manual_seed(0)
    specs = parse_methods(args.methods)
    print(json.dumps({"machine": machine(), "threads": torch.get_num_threads()}), flush=True)
    rows = []
    if "synthetic" in args.sets:
        rows += synthetic_rows(specs, args.scenes, args.force, args.seed)
    if "photos" in args.sets:
        rows += photo_rows(specs, args.force, args.seed)
    if args.rows:
        with open(args.rows, "a") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in rows)
    print(table(rows))


if __name__ == "__main__":
    main()
