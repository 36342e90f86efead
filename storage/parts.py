"""Per-shard Parquet parts of the tables declared in storage/tables.py: one file per shard and
stage, whose presence marks the shard done for that stage.

A folder may hold parts of several writers told apart by a name prefix: ``errors/`` holds the
explain stage's ``part-XXXXX.parquet`` and e.g. ``reclassify-part-XXXXX.parquet``. The default
prefix ``part`` sees only its own files.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

from .runfolder import RunFolder
from .tables import DONE_BY, ERROR_PREFIX, ERRORS, Table

DEFAULT_PREFIX = "part"


def part_name(shard: int, prefix: str = DEFAULT_PREFIX) -> str:
    return f"{prefix}-{shard:05d}.parquet"


def write_part(run: RunFolder, table: Table, shard: int, rows: pa.Table | Sequence[dict],
               prefix: str = DEFAULT_PREFIX) -> None:
    """Write ``rows`` (an Arrow table or records, cast to the table's schema, so every part
    agrees) atomically as the shard's part."""
    schema = table.schema
    data = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(list(rows), schema)
    run.write_table(data.select(schema.names).cast(schema), table.path, part_name(shard, prefix))


def done_shards(run: RunFolder, table: Table, prefix: str = DEFAULT_PREFIX) -> set[int]:
    """Shards whose part of ``table`` (with that name prefix) is durably written."""
    if not run.exists(table.path):
        return set()
    names = [p.rsplit("/", 1)[-1] for p in run.fs.ls(run.local(table.path), detail=False)]
    head, digits = f"{prefix}-", len(prefix) + 1
    return {int(n[digits:digits + 5]) for n in names
            if n.startswith(head) and n.endswith(".parquet") and n[digits:digits + 5].isdigit()
            and len(n) == digits + 5 + len(".parquet")}


def pending(run: RunFolder, stage: str, n_shards: int) -> list[int]:
    """Shards of ``stage`` (explain, reclassify, evaluate) without their part."""
    done = done_shards(run, DONE_BY[stage])
    return [s for s in range(n_shards) if s not in done]


def read_parts(run: RunFolder, table: Table,
               prefix: str | tuple[str, ...] = DEFAULT_PREFIX) -> pa.Table:
    """All parts of ``table`` as one table (empty with the schema when none exist); ``prefix``
    may name several writers, e.g. every error part."""
    schema = table.schema
    prefixes = (prefix,) if isinstance(prefix, str) else prefix
    found = [run.read_table(table.path, part_name(s, p))
             for p in prefixes for s in sorted(done_shards(run, table, p))]
    return pa.concat_tables([t.cast(schema) for t in found]) if found else schema.empty_table()


def read_errors(run: RunFolder) -> pa.Table:
    """Every error part of the run (explain's and the analysis stages')."""
    return read_parts(run, ERRORS, tuple(ERROR_PREFIX.values()))


def finish_shard(run: RunFolder, stage: str, shard: int, records: Sequence[dict],
                 errors: Sequence[dict], table: Table | None = None) -> None:
    """Write the shard's error part of ``stage``, then its stage part (``table``, default the
    stage's own), which marks it done: a crash never leaves a shard looking done."""
    write_part(run, ERRORS, shard, errors, prefix=ERROR_PREFIX[stage])
    write_part(run, table or DONE_BY[stage], shard, records)
