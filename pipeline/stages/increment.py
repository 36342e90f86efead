"""Increments: a run into a folder that holds a run lists the archive again and compares it with
the folder's manifest. Images listed for the first time become new shards after the existing
ones; images no longer listed are recorded as removed, their rows and maps kept; images listed
again after a removal are back. Nothing that was explained moves, changes its id or is deleted.

A row of the listing is the folder's row when both have the same id and path, or, failing that,
when it is the only unmatched row of its file on both sides: an id derived from a path (the
folder reader's ``a/b`` for ``a/b.jpg``) then stays what it was even when a new ``a/b.png``
makes the reader keep suffixes. A new row whose id the folder already uses (a removed file's,
say) gets its path as id, or ``id#k``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fidoflow.storage import tables
from fidoflow.storage.runfolder import RunFolder


@dataclass(frozen=True)
class Comparison:
    """What the listing brings: the listing rows that are ``new`` (their indices), the ids they
    take (``new_ids``: unique in the folder) and the ids of the folder's rows it no longer lists
    (``gone``)."""

    new: np.ndarray
    new_ids: list[str]
    gone: list[str]


def _indexed(table: pa.Table, name: str) -> pa.Table:
    return table.append_column(name, pa.array(np.arange(table.num_rows), pa.int64()))


def _without(rows: pa.Table, column: str, values: pa.ChunkedArray) -> pa.Table:
    return rows.filter(pc.invert(pc.is_in(rows[column], values.combine_chunks())))


def compare(known: pa.Table, listing: pa.Table) -> Comparison:
    """The folder's rows ``known`` against a fresh ``listing``, both ``image_id`` and ``path``
    columns (ids unique on each side, as the manifest keeps them). The exact matches are one
    hash lookup of each listing id among the folder's (``index_in``) and a comparison of the
    paths; only the rows left over, few on a night, go through the join by path."""
    at = pc.index_in(listing["image_id"], value_set=known["image_id"].combine_chunks())
    same_path = pc.equal(listing["path"], known["path"].take(pc.fill_null(at, 0)))
    exact = pc.fill_null(pc.and_kleene(pc.is_valid(at), same_path), False)
    matched_old = np.zeros(known.num_rows, bool)
    matched_old[pc.filter(at, exact).to_numpy()] = True
    fresh = _indexed(listing.select(["image_id", "path"]), "new_row").filter(pc.invert(exact))
    old = _indexed(known.select(["image_id", "path"]), "old_row").filter(
        pa.array(~matched_old))
    by_path = _single_per_path(fresh).join(_single_per_path(old), "path", join_type="inner",
                                           left_suffix="_new", right_suffix="_old")
    new = _without(fresh, "new_row", by_path["new_row"]).sort_by("new_row")
    gone = _without(old, "old_row", by_path["old_row"])["image_id"].to_pylist()
    return Comparison(new["new_row"].to_numpy(), _unique_ids(new, known["image_id"],
                                                             listing["image_id"]), gone)


def new_rows(comparison: Comparison, batches: Iterable[pa.RecordBatch]) -> pa.Table:
    """The listing's new rows (a second pass over its ``batches``), with their ids."""
    taken, offset, want = [], 0, comparison.new
    for batch in batches:
        inside = want[(want >= offset) & (want < offset + batch.num_rows)] - offset
        if len(inside):
            taken.append(batch.take(pa.array(inside)))
        offset += batch.num_rows
    table = pa.Table.from_batches(taken) if taken else None
    if table is None:
        return pa.table({"image_id": pa.array([], pa.string())})
    return table.set_column(table.schema.get_field_index("image_id"), "image_id",
                            pa.array(comparison.new_ids, pa.string()))


def _single_per_path(rows: pa.Table) -> pa.Table:
    """The rows whose path no other row of ``rows`` has."""
    counts = rows.group_by("path").aggregate([("path", "count")])
    single = counts.filter(pc.equal(counts["path_count"], 1))["path"]
    return rows.filter(pc.is_in(rows["path"], single.combine_chunks()))


def _unique_ids(new: pa.Table, folder: pa.ChunkedArray, listed: pa.ChunkedArray) -> list[str]:
    """The new rows' ids, each renamed where the folder uses it already (a removed file's id,
    say): its path, else ``id#k``."""
    ids = new["image_id"].to_pylist()
    clashes = pc.is_in(new["image_id"], folder.combine_chunks()).to_pylist()
    if not any(clashes):
        return ids
    taken = set(folder.to_pylist()) | set(listed.to_pylist())
    for i, (clash, path) in enumerate(zip(clashes, new["path"].to_pylist(), strict=True)):
        if not clash:
            continue
        choice, k = (path if path and path not in taken else None), 2
        while choice is None:
            choice = f"{ids[i]}#{k}" if f"{ids[i]}#{k}" not in taken else None
            k += 1
        ids[i] = choice
        taken.add(choice)
    return ids


def numbered(new: pa.Table, first_shard: int, shard_size: int, increment: int) -> pa.Table:
    """``new`` with its shards (``shard_size`` rows each from ``first_shard``) and its
    ``increment``, in the manifest's columns."""
    n = new.num_rows
    shards = pa.array(first_shard + np.arange(n) // shard_size, pa.int32())
    data = new.drop_columns([c for c in ("shard", "increment") if c in new.column_names])
    data = data.append_column("shard", shards).append_column(
        "increment", pa.array(np.full(n, increment), pa.int32()))
    return data.select(tables.MANIFEST.schema.names).cast(tables.MANIFEST.schema)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def record_removed(run: RunFolder, gone: list[str], increment: int,
                   last_listed: str | None) -> tuple[int, int]:
    """Rewrite ``removed.parquet``, the folder's images the archive no longer lists (since which
    increment, and when a run last listed them: ``last_listed``, the previous increment's
    start, for those removed now); returns (newly removed, listed again)."""
    before = run.read_table(tables.REMOVED.path).to_pylist() if run.exists(
        tables.REMOVED.path) else []
    was = {r["image_id"]: r for r in before}
    now_gone = set(gone)
    rows = [was.get(i) or {"image_id": i, "removed_in": increment, "last_seen": last_listed}
            for i in gone]
    run.write_table(pa.Table.from_pylist(rows, tables.REMOVED.schema), tables.REMOVED.path)
    return len(now_gone - set(was)), len(set(was) - now_gone)


def removed_ids(run: RunFolder) -> set[str]:
    """The images of the folder its archive no longer lists."""
    if not run.exists(tables.REMOVED.path):
        return set()
    return set(run.read_table(tables.REMOVED.path, columns=["image_id"])["image_id"]
               .to_pylist())


def _entry_name(number: int) -> str:
    return f"increment-{number:05d}.parquet"


def read_increments(run: RunFolder) -> list[dict]:
    """Every recorded increment of the folder, in order."""
    if not run.exists(tables.INCREMENTS.path):
        return []
    names = sorted(n.rsplit("/", 1)[-1] for n in run.fs.ls(run.local(tables.INCREMENTS.path),
                                                            detail=False))
    return [run.read_table(tables.INCREMENTS.path, name).to_pylist()[0] for name in names
            if name.startswith("increment-") and name.endswith(".parquet")]


def write_entry(run: RunFolder, number: int, values: dict) -> None:
    """Increment ``number``'s row, updated with ``values`` (written whole, atomically)."""
    name = _entry_name(number)
    row = (run.read_table(tables.INCREMENTS.path, name).to_pylist()[0]
           if run.exists(tables.INCREMENTS.path, name) else {"increment": number})
    if "code_version" not in values and row.get("code_version") is None:
        from fidoflow.pipeline.provenance import code_version

        values = {**values, "code_version": code_version()}
    row.update(values)
    run.write_table(pa.Table.from_pylist([row], tables.INCREMENTS.schema), tables.INCREMENTS.path,
                    name)
