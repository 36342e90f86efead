"""The evaluate stage of one shard: deletion/insertion curves, box metrics and smoothness of
every explained image's joint map, written as the shard's ``metrics/`` part. Pipeline + storage
wired together, no Prefect inside: the tasks of ``explain_archive.py`` call it; so can a
notebook or a test."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from fidoflow.pipeline.analysis.evaluate import boxes_to_input, evaluate_masks
from fidoflow.pipeline.imaging.decode import to_tensor
from fidoflow.pipeline.models.device import resolve_device
from fidoflow.pipeline.models.loading import LoadedModel
from fidoflow.storage.runfolder import RunFolder

from . import stages
from .analysis_config import DEFAULT_ANALYSIS, AnalysisConfig
from .analysis_shards import batches, error_row, finish_shard, read_explained
from .config import RunConfig
from .pictures import Box, decode_row, original_size, view_box

BOX_COLUMNS = ("box_x0", "box_y0", "box_x1", "box_y1")
OPTIONAL_METRICS = ("share_in_box", "box_iou", "fdr")  # NaN (None in the table) without a box


@dataclass(frozen=True)
class Seen:
    """One image as the model sees it, and where that view lies in original pixels (the
    ground-truth boxes' frame)."""

    index: int  # map row within the shard
    row: dict
    model_input: torch.Tensor
    view: Box


def prepare(config: RunConfig, index: int, row: dict, model: LoadedModel) -> Seen:
    """Decode a manifest row's picture at twice the model input at least (faster JPEGs)."""
    img = decode_row(config, row, 2 * max(model.input_size))
    width, height = original_size(img)
    # the decoded picture may have been shrunk: its view, scaled to original pixels
    rx, ry = width / img.size[0], height / img.size[1]
    vx0, vy0, vx1, vy1 = view_box(img.size, model.input_size, model.resize)
    return Seen(index, row, to_tensor(img, model.input_size, model.resize),
                (vx0 * rx, vy0 * ry, vx1 * rx, vy1 * ry))


def evaluate_shard(config: RunConfig, shard: int,
                   analysis: AnalysisConfig = DEFAULT_ANALYSIS) -> dict[str, int]:
    """Mask metrics of every explained image and method of the shard; the ``metrics/`` part,
    written last, marks the shard done."""
    run = RunFolder(config.root)
    explained = read_explained(run, config, shard)
    targets = {(r.image_id, r.method): int(r.target)
               for r in explained.predictions.itertuples()}
    model = stages.model_of(config)
    device = resolve_device(config.device)
    module = model.on(device)
    todo = explained.todo()
    records: list[dict[str, object]] = []
    errors: list[dict[str, object]] = []
    for chunk in batches(todo, config.images_per_step):
        batch: list[Seen] = []
        for index, row in chunk:
            try:
                batch.append(prepare(config, index, row, model))
            except Exception as exc:  # noqa: BLE001 - one bad file must never stop a shard
                errors.append(error_row(row, "evaluate", exc))
        if not batch:
            continue
        x = torch.stack([s.model_input for s in batch]).to(device)
        boxes = boxes_to_input(truth_boxes([s.row for s in batch]),
                               np.array([s.view for s in batch]), model.input_size)
        for method, maps in explained.joint.items():
            chosen = [j for j, s in enumerate(batch) if (s.row["image_id"], method) in targets]
            if not chosen:
                continue
            began = time.perf_counter()
            sal = torch.from_numpy(np.stack([maps[batch[j].index] for j in chosen])
                                   .astype(np.float32))
            tgt = torch.tensor([targets[(batch[j].row["image_id"], method)] for j in chosen])
            out = evaluate_masks(module, x[chosen], sal, tgt, boxes[chosen], analysis.evaluate)
            seconds = (time.perf_counter() - began) / len(chosen)
            records += [metrics_row(batch[j].row, method, int(tgt[k]), out, k, seconds)
                        for k, j in enumerate(chosen)]
    return finish_shard(run, "evaluate", shard, len(todo), records, errors)


def truth_boxes(rows: Sequence[dict]) -> np.ndarray:
    """(N, 4) ground-truth boxes in original pixels; NaN rows where there is none."""
    out = np.full((len(rows), 4), np.nan)
    for i, row in enumerate(rows):
        values = [row.get(c) for c in BOX_COLUMNS]
        if all(v is not None for v in values):
            out[i] = values
    return out


def metrics_row(row: dict, method: str, target: int, out: dict[str, np.ndarray], k: int,
                seconds: float) -> dict[str, object]:
    """The ``metrics`` row of image ``k`` of ``evaluate_masks``' output."""
    hit = out["pointing_hit"][k]
    return {
        "image_id": row["image_id"], "method": method, "target": target,
        "deletion_auc": float(out["deletion_auc"][k]),
        "insertion_auc": float(out["insertion_auc"][k]),
        "deletion_curve": out["deletion_curve"][k].tolist(),
        "insertion_curve": out["insertion_curve"][k].tolist(),
        "pointing_hit": None if np.isnan(hit) else bool(hit),
        **{key: None if np.isnan(out[key][k]) else float(out[key][k])
           for key in OPTIONAL_METRICS},
        "total_variation": float(out["total_variation"][k]),
        "seconds": seconds,
    }
