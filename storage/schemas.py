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

PREDICTIONS = pa.schema([
    ("image_id", pa.string()),
    ("method", pa.string()),
    ("target", pa.int32()),
    ("target_name", pa.string()),
    ("target_prob", pa.float32()),
    ("top5", pa.list_(pa.int32())),
    ("top5_prob", pa.list_(pa.float32())),
    ("p_ssr", pa.float32()),
    ("p_sdr", pa.float32()),
    ("seconds", pa.float32()),
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
