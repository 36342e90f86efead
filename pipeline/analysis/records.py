"""Rows of the run's tables as plain records, built from what a stage computed: an error, a
re-classification, a metric row. Records go to storage as they are (the stage casts them to the
table's schema)."""

from __future__ import annotations

import numpy as np
import torch

from fidoflow.pipeline.metrics import columns

CropBox = tuple[int, int, int, int]  # x0, y0, x1, y1 in original pixels
BASELINE_METHOD = "none"  # the re-classification baseline: the full image, no mask ...
BASELINE_VARIANT = "global"  # ... the variant every other one is compared with


def error_record(row: dict, stage: str, error_type: str, message: str) -> dict[str, object]:
    """An ``errors`` row: one bad file is recorded, never allowed to stop a shard."""
    return {"image_id": row["image_id"], "path": row["path"], "stage": stage,
            "error_type": error_type, "message": message}


def exception_record(row: dict, stage: str, exc: BaseException) -> dict[str, object]:
    """The ``errors`` row of an exception raised while a stage handled ``row``."""
    return error_record(row, stage, type(exc).__name__, str(exc))


def int_or_none(value: object) -> int | None:
    """A nullable manifest integer (None or NaN when missing) as an int or None."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return int(value)


def label_fields(row: dict, top: list[int]) -> dict[str, object]:
    """The manifest's label and whether the top-1 / top-5 classes hit it (None: unlabelled)."""
    model_label = int_or_none(row.get("model_label"))
    return {"label": int_or_none(row.get("label")), "label_name": row.get("label_name"),
            "model_label": model_label,
            "correct": None if model_label is None else top[0] == model_label,
            "correct_top5": None if model_label is None else model_label in top}


def reclassify_record(row: dict, method: str, variant: str, probs: torch.Tensor,
                      class_names: list[str], k: int, box: CropBox | None) -> dict[str, object]:
    """One ``reclassify`` row (its ``seconds`` set by the caller)."""
    p, idx = probs[None].topk(min(k, probs.shape[-1]), dim=1)
    top = idx[0].tolist()
    record = {"image_id": row["image_id"], "method": method, "variant": variant,
              "top1": top[0], "top1_name": class_names[top[0]],
              "top1_prob": float(p[0, 0]), "top5": top, "top5_prob": p[0].tolist(),
              **label_fields(row, top)}
    for name, value in zip(("crop_x0", "crop_y0", "crop_x1", "crop_y1"), box or (None,) * 4,
                           strict=True):
        record[name] = value
    return record


def metric_record(row: dict, method: str, target: int, values: dict[str, np.ndarray], k: int,
                  seconds: float) -> dict[str, object]:
    """The ``metrics`` row of image ``k`` of ``evaluate_masks``' output: every registered
    metric's columns (None where the image lacks the metric's ground truth)."""
    return {"image_id": row["image_id"], "method": method, "target": target,
            **{c.name: c.value(values[c.name][k]) for c in columns()}, "seconds": seconds}
