"""Arrow schemas of every table of a run folder: the analysts' interface (see docs/tables.md)."""

from __future__ import annotations

import pyarrow as pa

MANIFEST = pa.schema([
    ("image_id", pa.string()),
    ("path", pa.string()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("sha256", pa.string()),
    ("label", pa.int32()),
    ("label_name", pa.string()),
    ("split", pa.string()),
    ("shard", pa.int32()),
    # Added with the archive readers (docs/manifest.md): boxes in pixels of the original image,
    # visible parts, camera-trap fields, the label in the model's class space, and why a row
    # was refused before any decoding (null when it was not).
    ("box_x0", pa.float32()),
    ("box_y0", pa.float32()),
    ("box_x1", pa.float32()),
    ("box_y1", pa.float32()),
    ("parts", pa.list_(pa.struct([("name", pa.string()), ("x", pa.float32()),
                                  ("y", pa.float32())]))),
    ("empty", pa.bool_()),
    ("seq_id", pa.string()),
    ("location", pa.string()),
    ("datetime", pa.string()),
    ("n_annotations", pa.int32()),
    ("model_label", pa.int32()),
    ("manifest_error", pa.string()),
    ("manifest_message", pa.string()),
])

# predictions/part-XXXXX.parquet: one row per image and method instance. ``method`` is the
# instance's name in the run, ``kind`` the registered method it runs; ``scalars`` holds the
# method's own per-image numbers by name (FIDO: p_ssr, p_sdr, iterations; empty for others).
PREDICTIONS = pa.schema([
    ("image_id", pa.string()),
    ("method", pa.string()),
    ("kind", pa.string()),
    ("target", pa.int32()),
    ("target_source", pa.string()),
    ("target_name", pa.string()),
    ("target_prob", pa.float32()),
    ("top5", pa.list_(pa.int32())),
    ("top5_prob", pa.list_(pa.float32())),
    ("scalars", pa.map_(pa.string(), pa.float64())),
    ("seconds", pa.float32()),
])

# sag/part-XXXXX.parquet: the graphs of methods that explain with one (SAG), written by the
# explain stage beside predictions. One row per node: a root (a minimal sufficient patch set,
# ``parent`` null) or a child of one (the root with one patch removed). Patches are indices
# row-major over a ``grid`` × ``grid`` lattice of the model input.
SAG = pa.schema([
    ("image_id", pa.string()),
    ("method", pa.string()),
    ("node", pa.int32()),
    ("patches", pa.list_(pa.int32())),
    ("probability", pa.float32()),
    ("parent", pa.int32()),
    ("root", pa.bool_()),
    ("grid", pa.int32()),
])

# One row per image that did not make it through a stage (docs/manifest.md lists the stages
# and error types): every manifest row ends in predictions/ (once per method) or here.
ERRORS = pa.schema([
    ("image_id", pa.string()),
    ("path", pa.string()),
    ("stage", pa.string()),
    ("error_type", pa.string()),
    ("message", pa.string()),
])

# --- Re-classification, evaluation and the run summary (issue 5; docs/tables.md) ---------------

# reclassify/part-XXXXX.parquet: one row per image and (method, variant), plus one baseline row
# per image (method "none", variant "global"). Crop boxes are in pixels of the original image.
RECLASSIFY = pa.schema([
    ("image_id", pa.string()),
    ("method", pa.string()),
    ("variant", pa.string()),
    ("top1", pa.int32()),
    ("top1_name", pa.string()),
    ("top1_prob", pa.float32()),
    ("top5", pa.list_(pa.int32())),
    ("top5_prob", pa.list_(pa.float32())),
    ("label", pa.int32()),
    ("label_name", pa.string()),
    ("model_label", pa.int32()),
    ("correct", pa.bool_()),
    ("correct_top5", pa.bool_()),
    ("crop_x0", pa.int32()),
    ("crop_y0", pa.int32()),
    ("crop_x1", pa.int32()),
    ("crop_y1", pa.int32()),
    ("seconds", pa.float32()),
])

# metrics/part-XXXXX.parquet: one row per image and method; box metrics null without a box.
METRICS = pa.schema([
    ("image_id", pa.string()),
    ("method", pa.string()),
    ("target", pa.int32()),
    ("deletion_auc", pa.float32()),
    ("insertion_auc", pa.float32()),
    ("deletion_curve", pa.list_(pa.float32())),
    ("insertion_curve", pa.list_(pa.float32())),
    ("pointing_hit", pa.bool_()),
    ("share_in_box", pa.float32()),
    ("box_iou", pa.float32()),
    ("fdr", pa.float32()),
    ("total_variation", pa.float32()),
    ("seconds", pa.float32()),
])

# summary.parquet: every aggregate of a run in one tidy long table.
SUMMARY = pa.schema([
    ("section", pa.string()),
    ("group_by", pa.string()),
    ("group_value", pa.string()),
    ("method", pa.string()),
    ("variant", pa.string()),
    ("statistic", pa.string()),
    ("value", pa.float64()),
    ("ci_low", pa.float64()),
    ("ci_high", pa.float64()),
    ("n", pa.int64()),
])
