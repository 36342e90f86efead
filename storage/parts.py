"""Per-shard Parquet parts: one file per shard and stage, whose presence marks the shard done.

A stage folder may hold parts of several writers told apart by a name prefix: ``errors/`` holds
the explain stage's ``part-XXXXX.parquet`` and e.g. ``reclassify-part-XXXXX.parquet``. The default
prefix ``part`` sees only its own files, so older readers are unaffected.
"""

from __future__ import annotations

import pyarrow as pa

from .runfolder import RunFolder

DEFAULT_PREFIX = "part"


def part_name(shard: int, prefix: str = DEFAULT_PREFIX) -> str:
    return f"{prefix}-{shard:05d}.parquet"


def write_part(run: RunFolder, stage: str, shard: int, table: pa.Table, schema: pa.Schema,
               prefix: str = DEFAULT_PREFIX) -> None:
    """Write ``table`` (cast to the stage's schema, so every part agrees) atomically."""
    run.write_table(table.select(schema.names).cast(schema), stage, part_name(shard, prefix))


def done_shards(run: RunFolder, stage: str, prefix: str = DEFAULT_PREFIX) -> set[int]:
    """Shards whose part of ``stage`` (with that name prefix) is durably written."""
    if not run.exists(stage):
        return set()
    names = [p.rsplit("/", 1)[-1] for p in run.fs.ls(run.local(stage), detail=False)]
    head, digits = f"{prefix}-", len(prefix) + 1
    return {int(n[digits:digits + 5]) for n in names
            if n.startswith(head) and n.endswith(".parquet") and n[digits:digits + 5].isdigit()
            and len(n) == digits + 5 + len(".parquet")}


def read_stage(run: RunFolder, stage: str, schema: pa.Schema,
               prefix: str | tuple[str, ...] = DEFAULT_PREFIX) -> pa.Table:
    """All parts of a stage as one table (empty with the schema when none exist); ``prefix`` may
    name several writers, e.g. every error part."""
    prefixes = (prefix,) if isinstance(prefix, str) else prefix
    tables = [run.read_table(stage, part_name(s, p))
              for p in prefixes for s in sorted(done_shards(run, stage, p))]
    return pa.concat_tables([t.cast(schema) for t in tables]) if tables else schema.empty_table()
