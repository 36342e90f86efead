"""Concept explanations measured on the fine synthetic benchmark (issues 20 and 34): the spatial
XNN and the pooled XNN against the NMF baseline, on a classifier trained by ``fidoflow train`` on scenes whose classes differ by two
small parts (wing patch and crown, ``fine=True``).

    # the classifier (7.5 min on the 2-core box): 1,440 scenes, 24 classes
    python -c "from fidoflow.pipeline.archive.synthetic import write_archive; \\
               write_archive('fine/train', 1440, seed=11, classes=24, fine=True)"
    fidoflow train fine/train --backbone synthetic-cnn --out fine/model --epochs 30 \\
        --no-diversify --loss ce
    python bench/concepts.py --archive fine/train --model fine/model/model.pt --out fine/concepts

It learns the concepts (``learn_concepts``, in this process: seconds per class), then explains
``--scenes`` new scenes (seed 12) with ``xnn-spatial``, ``xnn`` and ``nmf`` for their true class and prints, per
method: faithfulness (R² of the rebuilt logit against the classifier's over those scenes; NMF's
is 1 by construction), how many concepts a class uses (k, and those with ≥ 10 % of the class's
positive contribution), whether the concepts separate the parts (per scene: the concept whose
map lies most on the wing and the one most on the crown are two different concepts, each more
on its own part than on the other), and seconds per image.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import pandas as pd
import torch

from fidoflow.pipeline.archive.synthetic import CROWN, WING, make_dataset
from fidoflow.pipeline.concepts.job import ConceptJob, learn_concepts
from fidoflow.pipeline.concepts.xnn import XnnConfig
from fidoflow.pipeline.methods import parse_methods
from fidoflow.pipeline.models.loading import load_model


def shares(maps: torch.Tensor, parts: torch.Tensor) -> tuple[float, float]:
    total = float(maps.sum().clamp_min(1e-9))
    return (float((maps * (parts == WING)).sum()) / total,
            float((maps * (parts == CROWN)).sum()) / total)


def separated(out, rows: pd.DataFrame, parts: torch.Tensor) -> list[bool]:
    """Per image: two different concepts, one more on the wing, the other more on the crown."""
    verdicts = []
    for i in range(len(parts)):
        concepts = rows[rows["image"] == i]["concept"].tolist()
        if len(concepts) < 2:
            verdicts.append(False)
            continue
        s = {c: shares(out.maps[f"c{c}"][i], parts[i]) for c in concepts}
        wing = max(s, key=lambda c: s[c][0] - s[c][1])
        crown = max(s, key=lambda c: s[c][1] - s[c][0])
        verdicts.append(wing != crown and s[wing][0] > s[wing][1] and s[crown][1] > s[crown][0])
    return verdicts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archive", required=True, help="the classifier's training archive")
    parser.add_argument("--model", required=True, help="model.pt written by fidoflow train")
    parser.add_argument("--out", required=True, help="the concept folder to write")
    parser.add_argument("--scenes", type=int, default=240)
    parser.add_argument("--steps", type=int, default=XnnConfig.steps)
    args = parser.parse_args()
    print(json.dumps({"load": os.getloadavg(), "threads": torch.get_num_threads()}))

    began = time.perf_counter()
    card = learn_concepts(ConceptJob(os.path.abspath(args.archive), args.out,
                                     os.path.abspath(args.model), XnnConfig(steps=args.steps)))
    learned = time.perf_counter() - began
    classes = len(card["classes"])
    print(json.dumps({"classes": classes, "images": card["images"], "layer": card["layer"],
                      "seconds": round(learned, 1),
                      "seconds_per_class": round(learned / classes, 2),
                      "train_val_r2_median": float(np.median(
                          [e["val_r2"] for e in card["classes"].values()])),
                      "k": [e["concepts"] for e in card["classes"].values()]}))

    model = load_model(os.path.abspath(args.model))
    module = model.on(torch.device("cpu"), layers=True)
    scenes = make_dataset(args.scenes, seed=12, classes=24, fine=True)
    labels = torch.tensor([model.class_names.index(scenes.class_names[int(y)])
                           for y in scenes.labels])
    for method in ("xnn-spatial", "xnn", "nmf"):
        spec = parse_methods(method, {"concepts": args.out})[method]
        began = time.perf_counter()
        with spec.build(module) as explainer:
            out = explainer.attribute(scenes.images, labels, size=scenes.images.shape[-1])
        seconds = (time.perf_counter() - began) / len(labels)
        rows = pd.DataFrame(out.rows)
        per_image = rows.groupby("image").agg(rebuilt=("reconstructed", "first"),
                                              logit=("logit", "first"))
        residual = ((per_image["rebuilt"] - per_image["logit"]) ** 2).sum()
        spread = ((per_image["logit"] - per_image["logit"].mean()) ** 2).sum()
        means = rows.groupby(["target", "concept"])["contribution"].mean().clip(lower=0)
        used = (means / means.groupby(level=0).transform("sum") >= 0.10).groupby(level=0).sum()
        verdicts = separated(out, rows, scenes.part_ids)
        print(json.dumps({
            "method": method, "images": len(labels), "held_out_r2": round(1 - residual / spread, 4),
            "concepts_per_class_mean": round(float(rows.groupby("target")["concept"].max().mean()), 2),
            "concepts_used_mean": round(float(used.mean()), 2),
            "parts_separated": round(float(np.mean(verdicts)), 3),
            "seconds_per_image": round(seconds, 4)}))


if __name__ == "__main__":
    main()
