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

ERRORS = pa.schema([
    ("image_id", pa.string()),
    ("path", pa.string()),
    ("stage", pa.string()),
    ("error_type", pa.string()),
    ("message", pa.string()),
])
