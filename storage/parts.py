"""Parquet parts of the sharded tables declared in storage/tables.py.

A stage writes one part per shard (``part-00042.parquet``) as each shard finishes, so a run
resumes shard by shard; a task that finished all its shards merges them into one range part
(``part-00000-00063.parquet``: shards 0 to 63), and a finished run is compacted into a few large
range parts. A part's presence marks its shards done for its stage.

Every row carries its ``shard``, so overlapping parts resolve by shard: a shard's own part wins
over any range holding it (a shard redone after compaction), a larger range over a smaller one
(the larger was made from the smaller: a compaction interrupted before it removed them). A
folder may hold the parts of several writers told apart by a name prefix: ``errors/`` holds
explain's ``part-...`` and ``reclassify-part-...``, ``evaluate-part-...``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from .runfolder import RunFolder
from .tables import DONE_BY, ERROR_PREFIX, ERRORS, Table

DEFAULT_PREFIX = "part"
NAME = re.compile(r"^(?P<prefix>[a-z-]+?)-(?P<first>\d{5,})(?:-(?P<last>\d{5,}))?\.parquet$")


def part_name(shard: int, prefix: str = DEFAULT_PREFIX) -> str:
    return f"{prefix}-{shard:05d}.parquet"


def range_name(first: int, last: int, prefix: str = DEFAULT_PREFIX) -> str:
    return f"{prefix}-{first:05d}-{last:05d}.parquet"


@dataclass(frozen=True)
class Part:
    """One part file: the shards ``first`` to ``last`` (inclusive); ``single``: a shard's own."""

    name: str
    first: int
    last: int
    single: bool

    @property
    def span(self) -> int:
        return self.last - self.first + 1


def listing(run: RunFolder, table: Table, prefix: str = DEFAULT_PREFIX) -> list[Part]:
    """The part files of ``table`` with that prefix."""
    if not run.exists(table.path):
        return []
    found = []
    for path in run.fs.ls(run.local(table.path), detail=False):
        match = NAME.match(path.rsplit("/", 1)[-1])
        if match is None or match["prefix"] != prefix:
            continue
        first = int(match["first"])
        last = int(match["last"]) if match["last"] else first
        found.append(Part(match.group(0), first, last, match["last"] is None))
    return found


def winners(found: Iterable[Part]) -> dict[int, Part]:
    """For every shard, the part whose rows count: its own part, else the largest range."""
    best: dict[int, Part] = {}
    rank = lambda p: (p.single, p.span, p.name)
    for part in found:
        for shard in range(part.first, part.last + 1):
            if shard not in best or rank(part) > rank(best[shard]):
                best[shard] = part
    return best


def done_shards(run: RunFolder, table: Table, prefix: str = DEFAULT_PREFIX) -> set[int]:
    """Shards whose rows of ``table`` (with that name prefix) are durably written."""
    return set(winners(listing(run, table, prefix)))


def pending(run: RunFolder, stage: str, n_shards: int) -> list[int]:
    """Shards of ``stage`` (explain, reclassify, evaluate) without their part."""
    done = done_shards(run, DONE_BY[stage])
    return [s for s in range(n_shards) if s not in done]


STAMPS = ("shard", "increment")  # columns a part's writer fills in for every row


def _stamped(table: Table, shard: int, increment: int | None, data: pa.Table) -> pa.Table:
    """``data`` with its shard and the increment that writes it, where ``table`` has them."""
    for name, value in zip(STAMPS, (shard, increment), strict=True):
        if name in table.schema.names and name not in data.column_names:
            data = data.append_column(name, pa.array([value] * data.num_rows, pa.int32()))
    return data


def write_part(run: RunFolder, table: Table, shard: int, rows: pa.Table | Sequence[dict],
               prefix: str = DEFAULT_PREFIX, increment: int | None = None) -> None:
    """Write ``rows`` (an Arrow table or records, with the shard and the writing
    ``increment`` filled in and cast to the table's schema, so every part agrees) atomically as
    the shard's own part."""
    schema = table.schema
    plain = pa.schema([f for f in schema if f.name not in STAMPS])
    data = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(list(rows), plain)
    data = _stamped(table, shard, increment, data)
    run.write_table(data.select(schema.names).cast(schema), table.path, part_name(shard, prefix))


def _read(run: RunFolder, table: Table, part: Part, shards: set[int]) -> pa.Table:
    """The rows of ``shards`` in ``part`` (all of them when the part wins every shard)."""
    data = run.read_table(table.path, part.name)
    if len(shards) < part.span and "shard" in data.column_names:
        data = data.filter(pc.is_in(data.column("shard"), pa.array(sorted(shards), pa.int32())))
    return data.cast(table.schema)


def read_parts(run: RunFolder, table: Table,
               prefix: str | tuple[str, ...] = DEFAULT_PREFIX) -> pa.Table:
    """Every row of ``table`` once, in shard order (empty with the schema when there is none);
    ``prefix`` may name several writers, e.g. every error part."""
    tables = []
    for p in (prefix,) if isinstance(prefix, str) else prefix:
        best = winners(listing(run, table, p))
        by_part: dict[Part, set[int]] = {}
        for shard, part in best.items():
            by_part.setdefault(part, set()).add(shard)
        tables += [_read(run, table, part, shards) for part, shards in by_part.items()]
    return _in_shard_order(pa.concat_tables(tables)) if tables else table.schema.empty_table()


def _in_shard_order(data: pa.Table) -> pa.Table:
    """Rows by shard, each shard's rows in the order they were written."""
    if "shard" not in data.column_names:
        return data
    return data.take(pc.sort_indices(data, [("shard", "ascending")]))


def read_shard(run: RunFolder, table: Table, shard: int,
               prefix: str = DEFAULT_PREFIX) -> pa.Table:
    """The rows of one shard (empty when it has none yet), from whichever part holds them."""
    part = winners(listing(run, table, prefix)).get(shard)
    return table.schema.empty_table() if part is None else _read(run, table, part, {shard})


def read_errors(run: RunFolder) -> pa.Table:
    """Every error part of the run (explain's and the analysis stages')."""
    return read_parts(run, ERRORS, tuple(ERROR_PREFIX.values()))


def finish_shard(run: RunFolder, stage: str, shard: int, records: Sequence[dict],
                 errors: Sequence[dict], table: Table | None = None,
                 increment: int | None = None) -> None:
    """Write the shard's error part of ``stage`` when it has errors (no empty parts), then its
    stage part (``table``, default the stage's own), which marks it done: a crash never leaves
    a shard looking done. ``increment``: the run of the folder that writes them."""
    if errors:
        write_part(run, ERRORS, shard, errors, prefix=ERROR_PREFIX[stage], increment=increment)
    write_part(run, table or DONE_BY[stage], shard, records, increment=increment)


def merge(run: RunFolder, table: Table, first: int, last: int,
          prefix: str = DEFAULT_PREFIX) -> bool:
    """Replace the parts lying wholly within shards ``first`` to ``last`` by one range part of
    their rows (written first, then the others removed: an interruption leaves both, which read
    the same). Nothing happens when a part reaching outside the range holds rows of it, or when
    the range is one part already. Returns whether it merged."""
    found = listing(run, table, prefix)
    inside = [p for p in found if first <= p.first and p.last <= last]
    straddling = [p for p in found if p not in inside and p.first <= last and p.last >= first]
    if straddling or not inside or (len(inside) == 1 and not inside[0].single
                                    and inside[0].span == last - first + 1):
        return False
    best = winners(inside)
    by_part: dict[Part, set[int]] = {}
    for shard, part in best.items():
        by_part.setdefault(part, set()).add(shard)
    data = _in_shard_order(pa.concat_tables([
        _read(run, table, part, shards) for part, shards in by_part.items()]))
    name = range_name(first, last, prefix)
    run.write_table(data, table.path, name)
    for part in inside:
        if part.name != name:
            run.fs.rm(run.local(table.path, part.name))
    return True


def compact(run: RunFolder, table: Table, span: int, n_shards: int,
            prefix: str = DEFAULT_PREFIX) -> int:
    """Merge ``table``'s parts into range parts of ``span`` shards each (the last shorter);
    returns the number of parts left."""
    for first in range(0, n_shards, span):
        merge(run, table, first, min(first + span, n_shards) - 1, prefix)
    return len(listing(run, table, prefix))
