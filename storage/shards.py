"""A shard's slice of the run folder: its manifest rows, and what the explain stage left of it
(predictions and joint maps), read without touching the other shards."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from . import masks, parts
from .runfolder import RunFolder
from .tables import MANIFEST, PREDICTIONS

Todo = list[tuple[int, dict]]  # (map row within the shard, manifest row)


def mask_rows(shards: np.ndarray, shard_size: int) -> np.ndarray:
    """The mask row of each manifest row, from the manifest's ``shard`` column (rows in shard
    order): shard × shard_size + the row's place within its shard."""
    shards = np.asarray(shards, dtype=np.int64)
    if not len(shards):
        return shards
    first = np.flatnonzero(np.r_[True, shards[1:] != shards[:-1]])  # each shard's first row
    place = np.arange(len(shards)) - np.repeat(first, np.diff(np.r_[first, len(shards)]))
    return shards * shard_size + place


def n_mask_rows(shards: np.ndarray, shard_size: int) -> int:
    """Rows the mask arrays need: up to the last shard's last row."""
    rows = mask_rows(shards, shard_size)
    return int(rows[-1]) + 1 if len(rows) else 0


def shard_rows(run: RunFolder, shard: int, shard_size: int) -> tuple[int, list[dict]]:
    """The first mask row of ``shard`` and its manifest records."""
    rows = run.read_table(MANIFEST.path, filters=[("shard", "==", shard)]).to_pylist()
    return shard * shard_size, rows


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

    def targets(self) -> dict[tuple[str, str], int]:
        """The class each (image_id, method) was explained for."""
        return {(r.image_id, r.method): int(r.target) for r in self.predictions.itertuples()}


def read_explained(run: RunFolder, shard: int, shard_size: int, methods: list[str],
                   rows: list[dict] | None = None) -> ExplainedShard:
    """The shard's rows (read unless given), predictions and joint maps of ``methods``."""
    start = shard * shard_size
    if rows is None:
        _, rows = shard_rows(run, shard, shard_size)
    predictions = parts.read_shard(run, PREDICTIONS, shard).to_pandas()
    region = slice(start, start + len(rows))
    joint = {m: masks.read_maps(run.masks_url, m, "joint", region) for m in methods}
    return ExplainedShard(rows, predictions, joint)
