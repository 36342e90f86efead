"""Shard bookkeeping shared by the re-classify and evaluate stages: which shards still lack
their part, what explain left of a shard, and writing a shard's outcome.

Each shard's ``reclassify/`` or ``metrics/`` part is written last and atomically, after the
stage's own error part (``errors/reclassify-part-XXXXX.parquet``,
``errors/evaluate-part-XXXXX.parquet``), so a crash never leaves a shard looking done; a rerun
skips shards whose part exists.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
from fidoflow.pipeline.analysis.explain import error_record
from fidoflow.storage import masks, parts, schemas
from fidoflow.storage.runfolder import RunFolder

from . import stages
from .config import RunConfig

Todo = list[tuple[int, dict]]  # (map row within the shard, manifest row)


@dataclass(frozen=True)
class StageParts:
    """Where an analysis stage writes: one part per shard in ``folder`` (``schema``), and its
    error parts under ``errors/`` named apart from explain's by ``error_prefix``."""

    folder: str
    schema: pa.Schema
    error_prefix: str


STAGES = {"reclassify": StageParts("reclassify", schemas.RECLASSIFY, "reclassify-part"),
          "evaluate": StageParts("metrics", schemas.METRICS, "evaluate-part")}
# every error part a run holds: explain's and each analysis stage's
ERROR_PREFIXES = (parts.DEFAULT_PREFIX, *(spec.error_prefix for spec in STAGES.values()))


def pending(config: RunConfig, stage: str, n_shards: int) -> list[int]:
    """Shards of ``stage`` ("reclassify" or "evaluate") without their part."""
    done = parts.done_shards(RunFolder(config.root), STAGES[stage].folder)
    return [s for s in range(n_shards) if s not in done]


@dataclass(frozen=True)
class ExplainedShard:
    """What explain left of one shard: its manifest rows, its predictions (one row per image
    and method explain produced) and each method's joint maps (map row i is ``rows[i]``'s)."""

    rows: list[dict]
    predictions: pd.DataFrame
    joint: dict[str, np.ndarray]

    def todo(self) -> Todo:
        """The images explain produced, in manifest order: shards partly lost to decode errors
        are analysed for what they have."""
        explained = set(self.predictions["image_id"])
        return [(i, row) for i, row in enumerate(self.rows) if row["image_id"] in explained]


def read_explained(run: RunFolder, config: RunConfig, shard: int) -> ExplainedShard:
    """The shard's rows, predictions and joint maps, read without the other shards."""
    start, rows = stages.shard_rows(run, config, shard)
    if shard in parts.done_shards(run, "predictions"):
        predictions = run.read_table("predictions", parts.part_name(shard)).to_pandas()
    else:
        predictions = schemas.PREDICTIONS.empty_table().to_pandas()
    region = slice(start, start + len(rows))
    joint = {m: masks.read_maps(run.masks_url, m, "joint", region) for m in config.methods}
    return ExplainedShard(rows, predictions, joint)


def batches(todo: Todo, size: int) -> Iterator[Todo]:
    """``todo`` in steps of ``size`` images (the run's ``images_per_step``)."""
    for b in range(0, len(todo), size):
        yield todo[b:b + size]


def error_row(row: dict, stage: str, exc: BaseException) -> dict[str, object]:
    """An ``errors`` table row: one bad file is recorded, never allowed to stop a shard."""
    return error_record(row, stage, type(exc).__name__, str(exc))


def finish_shard(run: RunFolder, stage: str, shard: int, explained: int,
                 records: list[dict[str, object]], errors: list[dict[str, object]]
                 ) -> dict[str, int]:
    """Write the shard's error part, then its stage part (which marks it done); returns the
    shard's counts for the flow's progress."""
    spec = STAGES[stage]
    parts.write_part(run, "errors", shard, pa.Table.from_pylist(errors, schemas.ERRORS),
                     schemas.ERRORS, prefix=spec.error_prefix)
    parts.write_part(run, spec.folder, shard, pa.Table.from_pylist(records, spec.schema),
                     spec.schema)
    return {"shard": shard, "images": explained - len(errors), "errors": len(errors)}

