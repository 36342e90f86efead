"""Parts of the sharded tables: a shard's own part, a task's range part, the compacted run,
which rows count when they overlap, and that a compacted run still resumes shard by shard."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from fidoflow.storage import parts, tables
from fidoflow.storage.runfolder import RunFolder

TABLE = tables.IMAGES


def rows(shard: int, n: int = 2, tag: str = "") -> list[dict]:
    return [{"image_id": f"{shard}-{i}{tag}", "path": f"{shard}/{i}.png", "bytes": 1,
             "mtime_ns": 0, "sha256": "x", "width": 1, "height": 1} for i in range(n)]


@pytest.fixture
def run(tmp_path: Path) -> RunFolder:
    return RunFolder(str(tmp_path / "run"))


def ids(run: RunFolder, table: tables.Table = TABLE) -> list[str]:
    return parts.read_parts(run, table).column("image_id").to_pylist()


def test_a_shard_part_holds_its_shard_and_marks_it_done(run: RunFolder) -> None:
    parts.write_part(run, TABLE, 3, rows(3))
    assert parts.done_shards(run, TABLE) == {3}
    data = parts.read_parts(run, TABLE)
    assert data.schema.equals(TABLE.schema) and data.column("shard").to_pylist() == [3, 3]
    assert parts.read_shard(run, TABLE, 4).num_rows == 0


def test_a_task_merges_its_shards_into_one_range_part(run: RunFolder) -> None:
    for shard in range(4):
        parts.write_part(run, TABLE, shard, rows(shard))
    assert parts.merge(run, TABLE, 0, 3)
    assert [p.name for p in parts.listing(run, TABLE)] == ["part-00000-00003.parquet"]
    assert parts.done_shards(run, TABLE) == {0, 1, 2, 3}
    assert ids(run) == [f"{s}-{i}" for s in range(4) for i in range(2)]
    assert not parts.merge(run, TABLE, 0, 3)  # already one part
    assert parts.read_shard(run, TABLE, 2).column("image_id").to_pylist() == ["2-0", "2-1"]


def test_a_shard_redone_after_compaction_wins_over_the_range(run: RunFolder) -> None:
    for shard in range(4):
        parts.write_part(run, TABLE, shard, rows(shard))
    parts.merge(run, TABLE, 0, 3)
    parts.write_part(run, TABLE, 1, rows(1, 3, tag="new"))  # its file changed: redone
    assert ids(run) == ["0-0", "0-1", "1-0new", "1-1new", "1-2new", "2-0", "2-1", "3-0", "3-1"]
    assert not parts.merge(run, TABLE, 0, 1)  # the range reaches beyond: left alone
    assert parts.merge(run, TABLE, 0, 3)  # the shard's part folds into a new range
    assert ids(run) == ["0-0", "0-1", "1-0new", "1-1new", "1-2new", "2-0", "2-1", "3-0", "3-1"]


def test_an_interrupted_compaction_reads_each_row_once(run: RunFolder) -> None:
    for shard in range(4):
        parts.write_part(run, TABLE, shard, rows(shard))
    parts.merge(run, TABLE, 0, 1)
    parts.merge(run, TABLE, 2, 3)
    big = parts.read_parts(run, TABLE)
    run.write_table(big, TABLE.path, parts.range_name(0, 3))  # written, smaller ones not removed
    assert len(parts.listing(run, TABLE)) == 3
    assert ids(run) == [f"{s}-{i}" for s in range(4) for i in range(2)]
    assert parts.compact(run, TABLE, 4, 4) == 1


def test_compaction_keeps_whole_spans_and_the_last_one_shorter(run: RunFolder) -> None:
    for shard in range(10):
        parts.write_part(run, TABLE, shard, rows(shard, 1))
    for first in range(0, 10, 2):  # tasks of two shards
        parts.merge(run, TABLE, first, min(first + 1, 9))
    assert parts.compact(run, TABLE, 4, 10) == 3
    assert [p.name for p in sorted(parts.listing(run, TABLE), key=lambda p: p.first)] == [
        "part-00000-00003.parquet", "part-00004-00007.parquet", "part-00008-00009.parquet"]
    assert ids(run) == [f"{s}-0" for s in range(10)]


def test_writers_with_other_prefixes_are_apart_and_large_shard_numbers_parse(
        run: RunFolder) -> None:
    errors = [{"image_id": "a", "path": "a", "stage": "decode", "error_type": "E",
               "message": "m"}]
    parts.write_part(run, tables.ERRORS, 123456, errors)
    parts.write_part(run, tables.ERRORS, 7, errors, prefix="reclassify-part")
    assert parts.done_shards(run, tables.ERRORS) == {123456}
    assert parts.done_shards(run, tables.ERRORS, "reclassify-part") == {7}
    assert parts.read_errors(run).column("shard").to_pylist() == [7, 123456]  # by shard


def test_no_error_part_is_written_for_a_shard_without_errors(run: RunFolder) -> None:
    parts.finish_shard(run, "explain", 0, [], [])
    assert parts.done_shards(run, tables.PREDICTIONS) == {0}
    assert not run.exists(tables.ERRORS.path)
    table = pa.Table.from_pylist([], tables.PREDICTIONS.schema)
    assert parts.read_parts(run, tables.PREDICTIONS).schema.equals(table.schema)
