"""The re-classify stage of one shard: every explained image classified again from each
method's joint map (crop, blend, crop+global next to the global baseline), written as the
shard's ``reclassify/`` part. Pipeline + storage wired together, no Prefect inside: the tasks
of ``explain_archive.py`` call it; so can a notebook or a test."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from fidoflow.pipeline.analysis.aggregate import BASELINE_METHOD, BASELINE_VARIANT
from fidoflow.pipeline.analysis.reclassify import BASELINE, ReclassifyConfig, reclassify, top_k
from fidoflow.pipeline.imaging.decode import to_tensor
from fidoflow.pipeline.models.device import resolve_device
from fidoflow.pipeline.models.inference import class_probabilities
from fidoflow.pipeline.models.loading import LoadedModel
from fidoflow.storage.runfolder import RunFolder
from torch import nn

from . import stages
from .analysis_config import DEFAULT_ANALYSIS, AnalysisConfig
from .analysis_shards import batches, error_row, finish_shard, read_explained
from .config import RunConfig
from .pictures import Box, decode_row, original_size, shrink_to_side, view_box

CropBox = tuple[int, int, int, int]  # x0, y0, x1, y1 in original pixels


@dataclass(frozen=True)
class Picture:
    """One image made ready for re-classification: the model input, and the picture at the
    working resolution that crops are cut from (``view``: the model's part of it; ``scale``:
    original pixels per working pixel, x and y)."""

    index: int  # map row within the shard
    row: dict
    model_input: torch.Tensor
    work: torch.Tensor
    view: Box
    scale: tuple[float, float]


def prepare(config: RunConfig, index: int, row: dict, model: LoadedModel,
            work_side: int) -> Picture:
    """Decode a manifest row's picture and shrink it to ``work_side``, the shorter side at
    which even the smallest crop keeps the model input's pixels."""
    img = decode_row(config, row, work_side)
    width, height = original_size(img)
    work = shrink_to_side(img, work_side)
    return Picture(index, row, to_tensor(img, model.input_size, model.resize),
                   to_tensor(work, (work.size[1], work.size[0])),
                   view_box(work.size, model.input_size, model.resize),
                   (width / work.size[0], height / work.size[1]))


def reclassify_shard(config: RunConfig, shard: int,
                     analysis: AnalysisConfig = DEFAULT_ANALYSIS) -> dict[str, int]:
    """Re-classify every explained image of the shard with each method's joint map; the
    ``reclassify/`` part, written last, marks the shard done."""
    rcfg = analysis.reclassify
    run = RunFolder(config.root)
    explained = read_explained(run, config, shard)
    model = stages.model_of(config)
    device = resolve_device(config.device)
    module = model.on(device)
    work_side = rcfg.decode_min_side(model.input_size)
    todo = explained.todo()
    records: list[dict[str, object]] = []
    errors: list[dict[str, object]] = []
    for chunk in batches(todo, config.images_per_step):
        began = time.perf_counter()
        batch: list[Picture] = []
        for index, row in chunk:
            try:
                batch.append(prepare(config, index, row, model, work_side))
            except Exception as exc:  # noqa: BLE001 - one bad file must never stop a shard
                errors.append(error_row(row, "reclassify", exc))
        if not batch:
            continue
        batch_records = reclassify_batch(module, device, model, rcfg, batch,
                                         explained.joint)
        seconds = (time.perf_counter() - began) / len(batch_records)
        for record in batch_records:
            record["seconds"] = seconds
        records.extend(batch_records)
    return finish_shard(run, "reclassify", shard, len(todo), records, errors)


def reclassify_batch(module: nn.Module, device: torch.device, model: LoadedModel,
                     rcfg: ReclassifyConfig, batch: list[Picture], joint: dict[str, np.ndarray]
                     ) -> list[dict[str, object]]:
    """``reclassify`` rows of a batch: the global baseline once, then every variant of each
    method (the global softmax is shared between methods)."""
    x = torch.stack([p.model_input for p in batch]).to(device)
    global_probs = class_probabilities(module, x, rcfg.batch_size)
    records = [record_of(p.row, BASELINE_METHOD, BASELINE_VARIANT, global_probs[j], model,
                         rcfg.topk, None) for j, p in enumerate(batch)]
    pictures = [p.work for p in batch]
    views = [p.view for p in batch]
    for method, maps in joint.items():
        sal = torch.from_numpy(np.stack([maps[p.index] for p in batch]).astype(np.float32))
        out = reclassify(module, x, sal, pictures, views, rcfg, global_probs)
        for variant, probs in out.probs.items():
            if variant == BASELINE:
                continue
            for j, picture in enumerate(batch):
                box = None
                if variant != "blend" and out.boxes is not None:
                    box = original_box(out.boxes[j].tolist(), picture.scale)
                records.append(record_of(picture.row, method, variant, probs[j], model,
                                         rcfg.topk, box))
    return records


def original_box(box: list[float], scale: tuple[float, float]) -> CropBox:
    """A crop box in working pixels, in the original picture's pixels."""
    sx, sy = scale
    x0, y0, x1, y1 = box
    return round(x0 * sx), round(y0 * sy), round(x1 * sx), round(y1 * sy)


def record_of(row: dict, method: str, variant: str, probs: torch.Tensor, model: LoadedModel,
              k: int, box: CropBox | None) -> dict[str, object]:
    """One ``reclassify`` row (its ``seconds`` set by the caller)."""
    idx, p = top_k(probs[None], k)
    top = idx[0].tolist()
    record = {"image_id": row["image_id"], "method": method, "variant": variant,
              "top1": top[0], "top1_name": model.class_names[top[0]],
              "top1_prob": float(p[0, 0]), "top5": top, "top5_prob": p[0].tolist(),
              **label_fields(row, top)}
    for name, value in zip(("crop_x0", "crop_y0", "crop_x1", "crop_y1"), box or (None,) * 4,
                           strict=True):
        record[name] = value
    return record


def label_fields(row: dict, top: list[int]) -> dict[str, object]:
    """The manifest's label and whether the top-1 / top-5 classes hit it (None: unlabelled)."""
    model_label = int_or_none(row.get("model_label"))
    return {"label": int_or_none(row.get("label")), "label_name": row.get("label_name"),
            "model_label": model_label,
            "correct": None if model_label is None else top[0] == model_label,
            "correct_top5": None if model_label is None else model_label in top}


def int_or_none(value: object) -> int | None:
    """A nullable manifest integer (None or NaN when missing) as an int or None."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return int(value)
