"""Per-shard Parquet parts: one file per shard and stage, whose presence marks the shard done."""

from __future__ import annotations

import pyarrow as pa

from .runfolder import RunFolder


def part_name(shard: int) -> str:
    return f"part-{shard:05d}.parquet"


def write_part(run: RunFolder, stage: str, shard: int, table: pa.Table, schema: pa.Schema) -> None:
    """Write ``table`` (cast to the stage's schema, so every part agrees) atomically."""
    run.write_table(table.select(schema.names).cast(schema), stage, part_name(shard))


def done_shards(run: RunFolder, stage: str) -> set[int]:
    """Shards whose part of ``stage`` is durably written."""
    if not run.exists(stage):
        return set()
    names = [p.rsplit("/", 1)[-1] for p in run.fs.ls(run.local(stage), detail=False)]
    return {int(n[5:10]) for n in names if n.startswith("part-") and n.endswith(".parquet")}


def read_stage(run: RunFolder, stage: str, schema: pa.Schema) -> pa.Table:
    """All parts of a stage as one table (empty with the schema when none exist)."""
    shards = sorted(done_shards(run, stage))
    tables = [run.read_table(stage, part_name(s)) for s in shards]
    return pa.concat_tables([t.cast(schema) for t in tables]) if tables else schema.empty_table()
