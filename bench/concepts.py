"""Concept explanations measured on the fine synthetic benchmark (issues 20 and 34): the spatial
XNN and the pooled XNN against the NMF baseline, on a classifier trained by ``fidoflow train`` on
scenes whose classes differ by two small parts (wing patch and crown, ``fine=True``) or, with
``--tail``, by three (and the tail's tip: 48 classes, ``tail=True`` in write_archive).

    # the classifier (7.5 min on the 2-core box): 1,440 scenes, 24 classes
    python -c "from fidoflow.pipeline.archive.synthetic import write_archive; \\
               write_archive('fine/train', 1440, seed=11, classes=24, fine=True)"
    fidoflow train fine/train --backbone synthetic-cnn --out fine/model --epochs 30 \\
        --no-diversify --loss ce
    python bench/concepts.py --archive fine/train --model fine/model/model.pt --out fine/concepts

    # three parts: 2,880 scenes of 48 classes (tail=True), the same training, then (every 3rd
    # class: both tip colours; every 2nd would be the pink-tipped ones only)
    python bench/concepts.py --tail --every 3 --archive tail/train --model tail/model/model.pt \\
        --out tail/concepts

It learns the concepts (``learn_concepts``, in this process: seconds per class), then explains
``--scenes`` new scenes (seed 12) with ``xnn-spatial``, ``xnn`` and ``nmf`` for their true class and prints, per
method: faithfulness (R² of the rebuilt logit against the classifier's over those scenes; NMF's
is 1 by construction), how many concepts a class uses (k, and those with ≥ 10 % of the class's
positive contribution), whether the concepts separate the parts (per scene: the concept whose
map lies most on each part, against its share on the others, is a different one for each part,
and more on its own part than on any other), and seconds per image. The NMF baseline is also
fitted by the bench's own code (``plain_nmf``, numpy), which shares nothing with the spatial
XNN's NMF start; the product's ``nmf`` method is printed beside it. ``--every n`` learns and
explains every n-th class only.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch

from fidoflow.pipeline.archive.synthetic import CROWN, TAIL, WING, class_names, make_dataset
from fidoflow.pipeline.concepts.job import ConceptJob, learn_concepts
from fidoflow.pipeline.concepts.xnn import XnnConfig
from fidoflow.pipeline.methods import parse_methods
from fidoflow.pipeline.models.loading import load_model
from fidoflow.storage.conceptfolder import sample_file


def shares(maps: torch.Tensor, parts: torch.Tensor, ids: tuple[int, ...]) -> list[float]:
    """The share of a concept map's mass on each part."""
    total = float(maps.sum().clamp_min(1e-9))
    return [float((maps * (parts == part)).sum()) / total for part in ids]


def separated(out, rows: pd.DataFrame, parts: torch.Tensor, ids: tuple[int, ...]) -> list[bool]:
    """Per image: a different concept for each part, each more on its part than on any other
    (the concept of a part: the one whose share there most exceeds its share elsewhere)."""
    verdicts = []
    for i in range(len(parts)):
        concepts = rows[rows["image"] == i]["concept"].tolist()
        lead = {}  # lead[c][p]: concept c's share on part p less its largest elsewhere
        for c in concepts:
            s = shares(out.maps[f"c{c}"][i], parts[i], ids)
            lead[c] = [v - max(s[:p] + s[p + 1:]) for p, v in enumerate(s)]
        chosen = [max(lead, key=lambda c: lead[c][p]) for p in range(len(ids))]
        verdicts.append(len(set(chosen)) == len(ids)
                        and all(lead[c][p] > 0 for p, c in enumerate(chosen)))
    return verdicts


def plain_nmf(rows: np.ndarray, k: int, steps: int = 300, seed: int = 0) -> np.ndarray:
    """The baseline's own NMF (Lee & Seung's updates from a seeded random start, numpy): the
    bank H (k, C) of non-negative rows (M, C). Written here so that the baseline shares no code
    with the spatial XNN, whose start is the product's NMF."""
    rng = np.random.default_rng(seed)
    u = rng.random((len(rows), k)) + 0.1
    h = rng.random((k, rows.shape[1])) + 0.1
    for _ in range(steps):
        h *= (u.T @ rows) / (u.T @ u @ h + 1e-9)
        u *= (rows @ h.T) / (u @ h @ h.T + 1e-9)
    return h


def plain_coefficients(rows: np.ndarray, bank: np.ndarray, steps: int = 100) -> np.ndarray:
    """Non-negative U (M, k) with rows ≈ U·bank, the bank fixed."""
    u = np.full((len(rows), len(bank)), 0.1)
    for _ in range(steps):
        u *= (rows @ bank.T) / (u @ bank @ bank.T + 1e-9)
    return u


def plain_nmf_maps(out_dir: str, card: dict, spatial: torch.Tensor, labels: torch.Tensor,
                   size: int) -> tuple[dict, pd.DataFrame]:
    """The NMF baseline's concept maps of new scenes, fitted on each class's stored own maps
    with ``plain_nmf`` at the class's spatial k: ``{"c1": (N, size, size), ...}`` and one row
    per image and concept, as ``separated`` reads them."""
    k_most = max(e["spatial_concepts"] for e in card["classes"].values())
    n, channels, h, w = spatial.shape
    maps = {f"c{c}": torch.zeros(n, size, size) for c in range(1, k_most + 1)}
    rows = []
    for target in labels.unique().tolist():
        entry = card["classes"][str(target)]
        own = torch.load(os.path.join(out_dir, sample_file(target)),
                         weights_only=False)["spatial"].float().clamp_min(0)
        bank = plain_nmf(own.permute(0, 2, 3, 1).reshape(-1, channels).double().numpy(),
                         entry["spatial_concepts"])
        mine = torch.nonzero(labels == target)[:, 0]
        new = spatial[mine].clamp_min(0).permute(0, 2, 3, 1).reshape(-1, channels)
        coef = torch.from_numpy(plain_coefficients(new.double().numpy(), bank)).float()
        coef = coef.view(len(mine), h, w, -1).permute(0, 3, 1, 2)
        coef = torch.nn.functional.interpolate(coef, size=(size, size), mode="bilinear")
        for c in range(coef.shape[1]):
            maps[f"c{c + 1}"][mine] = coef[:, c]
        rows += [{"image": int(i), "concept": c + 1} for i in mine for c in range(coef.shape[1])]
    return maps, pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archive", required=True, help="the classifier's training archive")
    parser.add_argument("--model", required=True, help="model.pt written by fidoflow train")
    parser.add_argument("--out", required=True, help="the concept folder to write")
    parser.add_argument("--scenes", type=int, default=240)
    parser.add_argument("--steps", type=int, default=XnnConfig.steps)
    parser.add_argument("--tail", action="store_true",
                        help="the three-part scenes (wing patch, crown, tail tip: 48 classes)")
    parser.add_argument("--every", type=int, default=1,
                        help="learn and explain every n-th class only (a shorter run)")
    args = parser.parse_args()
    names = class_names(fine=True, tail=args.tail)
    chosen = names[::args.every]
    ids = (WING, CROWN, TAIL) if args.tail else (WING, CROWN)
    print(json.dumps({"load": os.getloadavg(), "threads": torch.get_num_threads()}))

    began = time.perf_counter()
    card = learn_concepts(ConceptJob(os.path.abspath(args.archive), args.out,
                                     os.path.abspath(args.model), XnnConfig(steps=args.steps),
                                     classes=chosen))
    learned = time.perf_counter() - began
    classes = len(card["classes"])
    print(json.dumps({"classes": classes, "images": card["images"], "layer": card["layer"],
                      "seconds": round(learned, 1),
                      "seconds_per_class": round(learned / classes, 2),
                      "train_val_r2_median": float(np.median(
                          [e["val_r2"] for e in card["classes"].values()])),
                      "k": [e["concepts"] for e in card["classes"].values()],
                      "spatial_k": [e["spatial_concepts"] for e in card["classes"].values()]}))

    model = load_model(os.path.abspath(args.model))
    module = model.on(torch.device("cpu"), layers=True)
    scenes = make_dataset(args.scenes * args.every, seed=12, classes=len(names), fine=True,
                          tail=args.tail)
    keep = torch.tensor([scenes.class_names[int(y)] in chosen for y in scenes.labels])
    images, parts = scenes.images[keep], scenes.part_ids[keep]
    labels = torch.tensor([model.class_names.index(scenes.class_names[int(y)])
                           for y in scenes.labels[keep]])
    features = {}
    layer = dict(module.named_modules())[card["layer"]["name"]]
    hook = layer.register_forward_hook(lambda _m, _i, o: features.setdefault("maps", o.detach()))
    with torch.no_grad():
        module(images)
    hook.remove()
    maps, rows = plain_nmf_maps(args.out, card, features["maps"].float(), labels,
                                images.shape[-1])
    print(json.dumps({"method": "nmf (the bench's own, at the spatial k)",
                      "parts_separated": round(float(np.mean(separated(
                          SimpleNamespace(maps=maps), rows, parts, ids))), 3)}))
    for method in ("xnn-spatial", "xnn", "nmf"):
        spec = parse_methods(method, {"concepts": args.out})[method]
        began = time.perf_counter()
        with spec.build(module) as explainer:
            out = explainer.attribute(images, labels, size=images.shape[-1])
        seconds = (time.perf_counter() - began) / len(labels)
        rows = pd.DataFrame(out.rows)
        per_image = rows.groupby("image").agg(rebuilt=("reconstructed", "first"),
                                              logit=("logit", "first"))
        residual = ((per_image["rebuilt"] - per_image["logit"]) ** 2).sum()
        spread = ((per_image["logit"] - per_image["logit"].mean()) ** 2).sum()
        means = rows.groupby(["target", "concept"])["contribution"].mean().clip(lower=0)
        used = (means / means.groupby(level=0).transform("sum") >= 0.10).groupby(level=0).sum()
        verdicts = separated(out, rows, parts, ids)
        print(json.dumps({
            "method": method, "images": len(labels), "held_out_r2": round(1 - residual / spread, 4),
            "concepts_per_class_mean": round(float(rows.groupby("target")["concept"].max().mean()), 2),
            "concepts_used_mean": round(float(used.mean()), 2),
            "parts_separated": round(float(np.mean(verdicts)), 3),
            "seconds_per_image": round(seconds, 4)}))


if __name__ == "__main__":
    main()
