"""Plain CE vs CE + diversification block vs GCE + block on the fine synthetic birds.

    .venv/bin/python bench/train.py                       # 24 classes, 3 seeds (~10 min on 2 quiet cores)
    .venv/bin/python bench/train.py --seeds 1 --epochs 2  # a quick look
    .venv/bin/python bench/train.py --backbone efficientnet-lite0 --classes 6 --scene-size 128 \
        --train 648 --val 72 --test 120 --masks 0 --variants "GCE + block"
        # issue 23's task: `fidoflow train`'s own recipe (TrainConfig's defaults) from ImageNet
        # weights, scenes squashed to 224² as the trainer decodes them (~17 min a run)

The fine scenes (pipeline/synthetic.py, ``fine=True``) have classes that differ by two small
parts, the wing patch (~2 % of the image) and the crown (~0.6 %); train, validation and test
scenes come from different seeds. Each variant trains the class-map network on the synthetic
CNN's backbone (pipeline/training) with every seed; test accuracy is given as the mean over seeds
with a 95 % t-interval. Then SCD masks (the engine's defaults, true class) of every trained model
on the first test scenes say where its evidence lies: the share of the saliency mass on the
parts (wing, crown, both) and the parts hit (a part is hit when the map reaches half its maximum
somewhere on it). Prints a Markdown table; timings carry the load average they were taken at.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
from PIL import Image

from fidoflow.pipeline.archive.synthetic import CROWN, DEFAULT_SIZE, WING, make_dataset
from fidoflow.pipeline.imaging.decode import to_tensor
from fidoflow.pipeline.imaging.filters import resize_maps
from fidoflow.pipeline.methods.fido import Fido, FidoConfig
from fidoflow.pipeline.metrics.box import share_inside
from fidoflow.pipeline.models.class_maps import BACKBONES, build_network, input_size
from fidoflow.pipeline.training.data import ImageTensors, TrainData
from fidoflow.pipeline.training.diversify import DiversifyConfig
from fidoflow.pipeline.training.loop import TrainConfig, evaluate, fit

VARIANTS = {
    "CE": {"loss": "ce", "diversify": None},
    "CE + block": {"loss": "ce", "diversify": DiversifyConfig()},
    "GCE + block": {"loss": "gce", "diversify": DiversifyConfig()},
}
FROM_SCRATCH = {"lr": 3e-3, "batch_size": 64, "epochs": 15}  # the synthetic CNN's bench recipe
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def generate(n: int, seed: int, classes: int, chunk: int = 500, scene: int = DEFAULT_SIZE,
             size: tuple[int, int] | None = None):
    """Fine scenes of side ``scene`` as uint8 images, labels and part ids (scene i depends on
    (seed, i) only); ``size``: squashed to the network's input as the trainer decodes a PNG."""
    parts = [make_dataset(min(chunk, n - s), seed + s, size=scene, classes=classes, fine=True)
             for s in range(0, n, chunk)]
    images = torch.cat([(p.images * 255).round().to(torch.uint8) for p in parts])
    if size is not None and tuple(images.shape[-2:]) != size:
        images = torch.stack([(to_tensor(Image.fromarray(im.permute(1, 2, 0).numpy()), size)
                               * 255).round().to(torch.uint8) for im in images])
    part_ids = torch.cat([p.part_ids for p in parts])
    if tuple(part_ids.shape[-2:]) != tuple(images.shape[-2:]):  # the parts squashed alike
        part_ids = torch.nn.functional.interpolate(
            part_ids[:, None].float(), size=tuple(images.shape[-2:]), mode="nearest")[:, 0].long()
    return (ImageTensors(images, torch.cat([p.labels for p in parts])), part_ids,
            parts[0].class_names)


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95 % t-interval (0 for a single value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, T95.get(len(values) - 1, 1.96) * statistics.stdev(values) / len(values) ** 0.5


def part_evidence(net: torch.nn.Module, test: ImageTensors, part_ids: torch.Tensor,
                  n: int) -> dict[str, float]:
    """SCD masks of the true class on the first ``n`` test scenes: saliency shares and parts hit."""
    images = test.images[:n].float() / 255
    with Fido(net.eval(), FidoConfig()) as fido:
        joint = fido.attribute(images, test.labels[:n], list(range(n))).maps["joint"].float()
    ids = part_ids[:n]
    sal = resize_maps(joint, tuple(images.shape[-2:]))
    hits = torch.stack([(torch.where(ids == p, sal, 0).flatten(1).max(1).values
                         >= 0.5 * sal.flatten(1).max(1).values) for p in (WING, CROWN)], 1)
    return {"share_parts": share_inside(joint, (ids > 0).float()).nanmean().item(),
            "share_wing": share_inside(joint, (ids == WING).float()).nanmean().item(),
            "share_crown": share_inside(joint, (ids == CROWN).float()).nanmean().item(),
            "parts_hit": hits.float().sum(1).mean().item(),
            "both_hit": hits.all(1).float().mean().item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=24)
    parser.add_argument("--train", type=int, default=720, help="30 scenes a class, as CUB")
    parser.add_argument("--val", type=int, default=480)
    parser.add_argument("--test", type=int, default=1200)
    parser.add_argument("--backbone", default="synthetic-cnn", choices=BACKBONES,
                        help="efficientnet-lite0: from its ImageNet weights, with TrainConfig's "
                             "defaults (fidoflow train's recipe) unless given below")
    parser.add_argument("--scene-size", type=int, default=DEFAULT_SIZE,
                        help="side of the generated scenes (squashed to the backbone's input)")
    parser.add_argument("--epochs", type=int, default=None, help="default: 15 for the "
                        "synthetic CNN, TrainConfig's for Lite0 (so for lr and batch)")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0,
                        help="seeds first-seed .. first-seed + seeds - 1 (split seeds over processes)")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="comma list of the variants to train")
    parser.add_argument("--rows", default=None, metavar="JSONL",
                        help="also append every run's figures to this file")
    parser.add_argument("--table", default=None, metavar="JSONL",
                        help="only print the table of the runs recorded in this file")
    parser.add_argument("--masks", type=int, default=16, help="test scenes explained per model")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.table:
        with open(args.table) as fh:
            runs = [json.loads(line) for line in fh if line.strip()]
        rows: dict[str, list[dict]] = {name: [] for name in VARIANTS}
        for run in runs:
            rows[run["variant"]].append(run)
        print_table(rows)
        return
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")

    recipe = FROM_SCRATCH if args.backbone == "synthetic-cnn" else {}
    recipe = {**recipe, **{key: value for key, value in (
        ("lr", args.lr), ("batch_size", args.batch), ("epochs", args.epochs)) if value}}
    size = input_size(args.backbone)
    began = time.perf_counter()
    train, _, names = generate(args.train, 10_000_000, args.classes, scene=args.scene_size,
                               size=size)
    val, _, _ = generate(args.val, 20_000_000, args.classes, scene=args.scene_size, size=size)
    test, test_parts, _ = generate(args.test, 30_000_000, args.classes, scene=args.scene_size,
                                   size=size)
    data = TrainData(train, val, test, list(names))
    print(f"generated {args.train} + {args.val} + {args.test} scenes, {args.classes} classes, "
          f"in {time.perf_counter() - began:.0f} s", flush=True)

    rows = {name: [] for name in VARIANTS}
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for name in (v.strip() for v in args.variants.split(",")):
            variant = VARIANTS[name]
            config = TrainConfig(backbone=args.backbone, seed=seed, **recipe, **variant)
            start = time.perf_counter()
            result = fit(config, data, device, lambda checkpoint, improved: None)
            seconds = time.perf_counter() - start
            load = os.getloadavg()[0]
            net = build_network(args.backbone, args.classes)
            net.load_state_dict(result.best_state)
            accuracy = evaluate(net, test, device)[1]
            evidence = part_evidence(net, test, test_parts, args.masks) if args.masks else {}
            run = {"variant": name, "seed": seed, "accuracy": accuracy, "seconds": seconds,
                   "best_epoch": result.best_epoch, "epochs": config.epochs,
                   "load": load, "threads": args.threads,
                   "val": result.history[result.best_epoch - 1]["val_accuracy"], **evidence}
            rows[name].append(run)
            if args.rows:
                with open(args.rows, "a") as fh:
                    fh.write(json.dumps(run) + "\n")
            print(f"seed {seed} {name}: test accuracy {accuracy:.3f} (best epoch "
                  f"{result.best_epoch}), {seconds:.0f} s at load {load:.1f}, "
                  + ", ".join(f"{k} {v:.3f}" for k, v in evidence.items()), flush=True)

    print(f"\n{args.backbone}, {args.classes} classes, {args.train} training scenes of "
          f"{args.scene_size}², {config.epochs} epochs, "
          f"{args.seeds} seeds, k = 15 for GCE, masks on {args.masks} test scenes per model; "
          f"total {time.perf_counter() - began:.0f} s\n")
    print_table(rows)


def print_table(rows: dict[str, list[dict]]) -> None:
    """The Markdown table: means over seeds (accuracy with its 95 % CI)."""
    keys = ["accuracy", "share_parts", "share_wing", "share_crown", "parts_hit", "both_hit"]
    print("| variant | test accuracy (95 % CI) | share on parts | wing | crown | parts hit (of 2) "
          "| both hit | train s/run* |")
    print("|---|---|---|---|---|---|---|---|")
    for name, results in rows.items():
        if not results:  # a variant not trained in this table's runs
            continue
        cells = []
        for key in keys:
            if key not in results[0]:
                cells.append("–")
                continue
            mean, half = mean_ci([r[key] for r in results])
            cells.append(f"{mean:.3f} ± {half:.3f}" if key == "accuracy" else f"{mean:.3f}")
        seconds = statistics.fmean(r["seconds"] for r in results)
        load = statistics.fmean(r["load"] for r in results)
        print(f"| {name} | " + " | ".join(cells) + f" | {seconds:.0f} (load {load:.1f}) |")
    runs = [r for rs in rows.values() for r in rs]
    print(f"\n* measured under load (load average in brackets), "
          f"{'/'.join(map(str, sorted({r['threads'] for r in runs})))} torch thread(s) a run; "
          f"seeds {sorted({r['seed'] for r in runs})}")


if __name__ == "__main__":
    main()
