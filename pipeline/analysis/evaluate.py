"""Evaluating masks (docs/method.md, "What each metric means") for a batch of images: every
registered metric (fidoflow/pipeline/metrics/: deletion/insertion, pointing game, share in the
box, box IoU and FDR, total variation) on the images that have what it needs.

Everything is measured at the model input's resolution, where the masks were made: boxes given
in pixels of the original picture are scaled there (``boxes_to_input``), and the pixel
parameters of the protocols (TorchRay's 15 px tolerance, SCD's smoothing sigma 3) are given at
``reference_size`` (224) and scaled with the input's shorter side.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from fidoflow.pipeline.analysis.records import metric_record
from fidoflow.pipeline.imaging.filters import REFERENCE_SIZE
from fidoflow.pipeline.imaging.views import Picture
from fidoflow.pipeline.metrics import METRICS, MetricBatch

BOX_COLUMNS = ("box_x0", "box_y0", "box_x1", "box_y1")  # the manifest's ground-truth box


@dataclass(frozen=True)
class EvaluateConfig:
    """``steps``: deletion/insertion curve points minus one (50: 2 % of the pixels per step,
    AUC within ~1e-3 of 100 steps at half the cost); ``baseline``: what deleted pixels become
    ("blur": I-GOS's blur, or "zeros"); ``batch_size``: perturbed images per forward pass
    (None: what suits the device, pipeline/models/device.forward_batch)."""

    steps: int = 50
    baseline: str = "blur"
    pointing_tolerance: float = 15.0
    smooth_sigma: float = 3.0
    threshold: float = 0.5
    reference_size: int = REFERENCE_SIZE
    batch_size: int | None = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def boxes_to_input(boxes: np.ndarray, views: np.ndarray, input_size: tuple[int, int]) -> np.ndarray:
    """(N, 4) boxes in original pixels -> model-input pixels, given each image's ``views`` (N, 4):
    the part of the original the model saw (the whole picture when it squashes). Boxes are
    clipped to the view; a box that is missing (NaN), empty or outside the view becomes NaN."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    views = np.asarray(views, dtype=np.float64).reshape(-1, 4)
    h, w = input_size
    sx = w / (views[:, 2] - views[:, 0])
    sy = h / (views[:, 3] - views[:, 1])
    out = np.stack([(boxes[:, 0] - views[:, 0]) * sx, (boxes[:, 1] - views[:, 1]) * sy,
                    (boxes[:, 2] - views[:, 0]) * sx, (boxes[:, 3] - views[:, 1]) * sy], axis=1)
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, w)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, h)
    empty = ~((out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1]))
    out[empty] = np.nan
    return out


@dataclass
class Evaluation:
    """Every registered metric's columns (N,) for N maps, and the rows of the tables some
    metrics keep (table name -> rows naming their image by position, ``image``)."""

    values: dict[str, np.ndarray]
    tables: dict[str, list[dict]]


@torch.no_grad()
def evaluate_masks(model: nn.Module, images: torch.Tensor, saliency: torch.Tensor,
                   targets: torch.Tensor, boxes: np.ndarray | None = None,
                   config: EvaluateConfig = EvaluateConfig(),
                   parts: list[list[dict]] | None = None) -> Evaluation:
    """Every registered metric of maps (N, h, w) of model inputs (N, 3, H, W) and the classes
    they explain (N,); ``boxes`` (N, 4) in input pixels, NaN rows where an image has none, and
    ``parts`` per image its visible parts in input pixels. Columns of a metric an image lacks
    the ground truth for are NaN."""
    n = len(images)
    boxes = (np.full((n, 4), np.nan) if boxes is None
             else np.asarray(boxes, dtype=np.float64).reshape(n, 4))
    batch = MetricBatch(model, images, torch.nan_to_num(saliency.float(), nan=0.0)
                        .to(images.device), targets, boxes, parts or [])
    was_training = model.training
    model.eval()
    try:
        values: dict[str, np.ndarray] = {}
        tables: dict[str, list[dict]] = {}
        for metric in METRICS:
            measured = metric.evaluate(batch, config)
            values |= measured.values
            if metric.table is not None:
                tables.setdefault(metric.table, []).extend(measured.rows)
        return Evaluation(values, tables)
    finally:
        model.train(was_training)


def parts_to_input(parts: object, view: tuple[float, float, float, float],
                   input_size: tuple[int, int]) -> list[dict]:
    """A manifest row's visible parts (original pixels) in model-input pixels; parts outside
    the view (a crop) are left out."""
    if not parts:
        return []
    vx0, vy0, vx1, vy1 = view
    h, w = input_size
    sx, sy = w / (vx1 - vx0), h / (vy1 - vy0)
    out = []
    for part in parts:
        x, y = (part["x"] - vx0) * sx, (part["y"] - vy0) * sy
        if 0 <= x < w and 0 <= y < h:
            out.append({"name": part["name"], "x": x, "y": y})
    return out


def truth_boxes(rows: Sequence[dict]) -> np.ndarray:
    """(N, 4) ground-truth boxes in original pixels; NaN rows where there is none."""
    out = np.full((len(rows), 4), np.nan)
    for i, row in enumerate(rows):
        values = [row.get(c) for c in BOX_COLUMNS]
        if all(v is not None for v in values):
            out[i] = values
    return out


def evaluate_pictures(module: nn.Module, device: torch.device, pictures: Sequence[Picture],
                      joint: Mapping[str, np.ndarray], targets: Mapping[tuple[str, str], int],
                      input_size: tuple[int, int], config: EvaluateConfig
                      ) -> tuple[list[dict[str, object]], dict[str, list[dict]]]:
    """``metrics`` rows of a batch of pictures: every method's joint map (row
    ``picture.index`` of ``joint[method]``) for the class it explained (``targets`` by
    (image_id, method)), and the rows of the metrics' own tables (``parts``); pictures a
    method did not explain are left out."""
    x = torch.stack([p.model_input for p in pictures]).to(device)
    boxes = boxes_to_input(truth_boxes([p.row for p in pictures]),
                           np.array([p.view for p in pictures]), input_size)
    parts = [parts_to_input(p.row.get("parts"), p.view, input_size) for p in pictures]
    records: list[dict[str, object]] = []
    details: dict[str, list[dict]] = {}
    for method, maps in joint.items():
        chosen = [j for j, p in enumerate(pictures) if (p.row["image_id"], method) in targets]
        if not chosen:
            continue
        began = time.perf_counter()
        sal = torch.from_numpy(np.stack([maps[pictures[j].index] for j in chosen])
                               .astype(np.float32))
        tgt = torch.tensor([targets[(pictures[j].row["image_id"], method)] for j in chosen])
        out = evaluate_masks(module, x[chosen], sal, tgt, boxes[chosen], config,
                             [parts[j] for j in chosen])
        seconds = (time.perf_counter() - began) / len(chosen)
        records += [metric_record(pictures[j].row, method, int(tgt[k]), out.values, k, seconds)
                    for k, j in enumerate(chosen)]
        for table, rows in out.tables.items():
            details.setdefault(table, []).extend(
                {"image_id": pictures[chosen[row.pop("image")]].row["image_id"],
                 "method": method, **row} for row in rows)
    return records, details
