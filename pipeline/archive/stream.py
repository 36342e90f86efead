"""An archive's manifest rows as a stream of Arrow record batches, in memory that grows with a
few bytes per row, not with the rows themselves.

A reader (readers/registry.py) yields entries; two passes make them manifest rows:

1. every entry is kept or dropped by the split, refused when its path text is unsafe (the file
   is never touched here: the worker that opens it checks the filesystem and records its size,
   hash and dimensions), and spilled to a temporary Arrow file; 64-bit hashes of its path and
   id are kept in arrays (8 bytes each), and the distinct label names in a set;
2. the spill is read back batch by batch: ids are derived from paths (``a/b.jpg`` -> ``a/b``,
   both keep their suffix when ``a/b.png`` exists too), later rows naming a file already listed
   become ``DuplicatePath`` rows, a repeated id is renamed ``id#2`` (``DuplicateImageId``),
   labels are mapped into the model's classes, and each row gets its shard.

Hash matches are confirmed on the strings themselves, so a collision never refuses a row.
"""

from __future__ import annotations

import math
import posixpath
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from fidoflow.pipeline.archive.labels import LabelMapper, read_label_map
from fidoflow.pipeline.archive.readers.common import (
    COLUMNS,
    SPLITS,
    image_id_from_path,
    lexical_check,
)
from fidoflow.pipeline.archive.readers.registry import (
    ArchiveError,
    Reader,
    archive_root,
    get_reader,
)

BATCH_ROWS = 65536
PART = pa.struct([("name", pa.string()), ("x", pa.float32()), ("y", pa.float32())])
ARROW = {"string": pa.string(), "Int32": pa.int32(), "Float32": pa.float32(),
         "boolean": pa.bool_(), "object": pa.list_(PART)}
SPILL = pa.schema([(name, ARROW[kind]) for name, kind in COLUMNS.items()])
ROWS = pa.schema([*SPILL, ("model_label", pa.int32()), ("shard", pa.int32())])


class EmptyArchive(ValueError):
    """The source has no image rows at all."""


def _hashes(values: Sequence[str | None]) -> np.ndarray:
    """64-bit hashes of strings (None hashes as the empty string; callers mask it)."""
    return pd.util.hash_array(np.array([v or "" for v in values], dtype=object),
                              categorize=False)


@dataclass
class _Pass:
    """What the first pass keeps of every row: masks and hashes, a few bytes each."""

    has_path: list[np.ndarray] = field(default_factory=list)
    refused: list[np.ndarray] = field(default_factory=list)
    has_id: list[np.ndarray] = field(default_factory=list)
    path_key: list[np.ndarray] = field(default_factory=list)  # normalised path
    raw_path: list[np.ndarray] = field(default_factory=list)
    given_id: list[np.ndarray] = field(default_factory=list)
    stem: list[np.ndarray] = field(default_factory=list)
    names: set[str] = field(default_factory=set)
    labelled: bool = False
    with_split: bool = False

    def add(self, rows: list[dict]) -> None:
        paths = [r["path"] for r in rows]
        self.has_path.append(np.array([p is not None for p in paths]))
        self.refused.append(np.array([r["manifest_error"] is not None for r in rows]))
        ids = [r.get("image_id") for r in rows]
        self.has_id.append(np.array([i is not None for i in ids]))
        self.path_key.append(_hashes([posixpath.normpath(p) if p else None for p in paths]))
        self.raw_path.append(_hashes(paths))
        self.given_id.append(_hashes(ids))
        self.stem.append(_hashes([image_id_from_path(p) if p else None for p in paths]))

    def done(self) -> dict[str, np.ndarray]:
        return {name: np.concatenate(getattr(self, name)) if getattr(self, name)
                else np.zeros(0, np.uint64)
                for name in ("has_path", "refused", "has_id", "path_key", "raw_path",
                             "given_id", "stem")}


def _first_rows(keys: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per row, the first row with the same key (itself when first; -1 where not valid)."""
    first = np.full(len(keys), -1, dtype=np.int64)
    rows = np.nonzero(valid)[0]
    if len(rows):
        _, index, inverse = np.unique(keys[rows], return_index=True, return_inverse=True)
        first[rows] = rows[index][inverse]
    return first


@dataclass
class ManifestStream:
    """The first pass's result; ``batches`` runs the second. ``rows``: the manifest's rows."""

    reader: Reader
    root: Path
    spill: Path
    rows: int
    keys: dict[str, np.ndarray]
    names: list[str]
    mapper: LabelMapper
    rank: dict[str, int] | None
    _cleanup: tempfile.TemporaryDirectory | None = None

    def close(self) -> None:
        if self._cleanup is not None:
            self._cleanup.cleanup()
            self._cleanup = None

    def batches(self, shard_size: int, rows_per_batch: int = BATCH_ROWS
                ) -> Iterator[pa.RecordBatch]:
        """The manifest rows (``ROWS`` schema) in batches of ``rows_per_batch``."""
        k = self.keys
        n = self.rows
        derived = ~k["has_id"] & k["has_path"]
        shared_stem = np.zeros(n, bool)  # a stem two files share: both keep their suffix
        rows = np.nonzero(derived)[0]
        if len(rows):
            _, inverse, counts = np.unique(k["stem"][rows], return_inverse=True,
                                           return_counts=True)
            shared_stem[rows] = counts[inverse] > 1
        ids = np.where(k["has_id"], k["given_id"],
                       np.where(shared_stem, k["raw_path"], k["stem"]))
        nameless = np.nonzero(~k["has_id"] & ~k["has_path"])[0]
        ids[nameless] = _hashes([f"row-{i}" for i in nameless])
        path_first = _first_rows(k["path_key"], k["has_path"] & ~k["refused"])
        id_first = _first_rows(ids, np.ones(n, bool))
        taken = np.unique(ids)
        renamed: set[int] = set()
        wanted_paths = set(path_first[(path_first >= 0) & (path_first != np.arange(n))].tolist())
        wanted_ids = set(id_first[id_first != np.arange(n)].tolist())
        first_path_of: dict[int, tuple[str, str]] = {}  # row -> (normalised path, image id)
        first_id_of: dict[int, tuple[str, str]] = {}  # row -> (image id, path)
        row = 0
        pending: list[dict] = []
        with pa.ipc.open_file(self.spill) as spilled:
            for b in range(spilled.num_record_batches):
                for record in spilled.get_batch(b).to_pylist():
                    i = row
                    row += 1
                    path = record["path"]
                    if record["image_id"] is None:
                        if path:
                            stem = image_id_from_path(path)
                            record["image_id"] = path if shared_stem[i] else stem
                        else:
                            record["image_id"] = f"row-{i}"
                    key = posixpath.normpath(path) if path else None
                    j = path_first[i]
                    if j >= 0 and j != i and record["manifest_error"] is None:
                        seen = first_path_of.get(int(j))
                        if seen is not None and seen[0] == key:
                            record["manifest_error"] = "DuplicatePath"
                            record["manifest_message"] = (f"the same file as row {j} (image id "
                                                          f"{seen[1]!r})")
                    original = str(record["image_id"])
                    j = id_first[i]
                    if j != i and int(j) in first_id_of and first_id_of[int(j)][0] == original:
                        name = self._free(original, taken, renamed)
                        record["image_id"] = name
                        if record["manifest_error"] is None:
                            record["manifest_error"] = "DuplicateImageId"
                            record["manifest_message"] = (
                                f"image id {original!r} is already used by row {j} "
                                f"({first_id_of[int(j)][1]!r}); renamed {name!r}")
                    if i in wanted_paths:
                        first_path_of[i] = (key, record["image_id"])
                    if i in wanted_ids:
                        first_id_of[i] = (original, path)
                    name = record["label_name"]
                    if record["label"] is None and self.rank is not None and name is not None:
                        record["label"] = self.rank.get(name)
                    record["model_label"] = self.mapper.map(name)
                    record["shard"] = i // shard_size
                    pending.append(record)
                    if len(pending) == rows_per_batch:
                        yield pa.RecordBatch.from_pylist(pending, ROWS)
                        pending = []
        if pending:
            yield pa.RecordBatch.from_pylist(pending, ROWS)

    @staticmethod
    def _free(original: str, taken: np.ndarray, renamed: set[int]) -> str:
        """``original#k`` for the smallest k ≥ 2 that no row uses."""
        k = 2
        while True:
            name = f"{original}#{k}"
            h = int(_hashes([name])[0])
            at = np.searchsorted(taken, h)
            if h not in renamed and not (at < len(taken) and taken[at] == h):
                renamed.add(h)
                return name
            k += 1


def _entry_row(entry: dict) -> dict:
    """The reader's entry as a spill row: its known columns, the path as text."""
    row = {name: entry.get(name) for name in COLUMNS}
    path = row["path"]
    if path is not None and not isinstance(path, str):
        row["path"] = None if isinstance(path, float) and math.isnan(path) else str(path)
    if row["manifest_error"] is None:
        row["manifest_error"], row["manifest_message"] = lexical_check(row["path"])
    return row


def open_manifest(source: str | Path, format: str | None, split: str,
                  images_root: str | Path | None, class_names: Sequence[str],
                  label_map: str | None = None) -> ManifestStream:
    """The first pass over ``source``'s entries (see the module's docstring); raises on
    archive-level problems only. ``close()`` the result when done (it removes the spill)."""
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"source folder not found: {source}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    root_override = Path(images_root) if images_root is not None else None
    chosen = get_reader(format, source, root_override)
    folder = tempfile.TemporaryDirectory(prefix="fidoflow-manifest-")
    spill = Path(folder.name) / "rows.arrow"
    keys = _Pass()
    rows = 0
    try:
        with pa.OSFile(str(spill), "wb") as sink, pa.ipc.new_file(sink, SPILL) as writer:
            batch: list[dict] = []
            for entry in chosen.entries(source, root_override):
                if entry.get("split"):
                    keys.with_split = True
                if split != "all" and entry.get("split") != split:
                    continue
                row = _entry_row(entry)
                if row["label_name"] is not None:
                    row["label_name"] = str(row["label_name"])
                    keys.names.add(row["label_name"])
                keys.labelled |= row["label"] is not None
                batch.append(row)
                if len(batch) == BATCH_ROWS:
                    keys.add(batch)
                    writer.write_batch(pa.RecordBatch.from_pylist(batch, SPILL))
                    rows += len(batch)
                    batch = []
            if batch:
                keys.add(batch)
                writer.write_batch(pa.RecordBatch.from_pylist(batch, SPILL))
                rows += len(batch)
        if split != "all" and not keys.with_split:
            raise ArchiveError(f"this {chosen.label} archive carries no train/test split; "
                               "use --split all")
        names = sorted(keys.names)
        mapping = read_label_map(label_map, class_names) if label_map else None
        rank = ({n: i for i, n in enumerate(names)} if chosen.rank_names and not keys.labelled
                else None)
        return ManifestStream(chosen, archive_root(source, root_override), spill, rows,
                              keys.done(), names, LabelMapper(names, class_names, mapping), rank,
                              folder)
    except BaseException:
        folder.cleanup()
        raise


def read_rows(source: str | Path, format: str | None = None, split: str = "all",
              images_root: str | Path | None = None, class_names: Sequence[str] = (),
              label_map: str | None = None) -> pd.DataFrame:
    """All manifest rows of ``source`` as one DataFrame (shards of one row each): for archives
    that fit in memory (training, tests, notebooks)."""
    stream = open_manifest(source, format, split, images_root, class_names, label_map)
    try:
        table = pa.Table.from_batches(list(stream.batches(1)), ROWS)
    finally:
        stream.close()
    frame = table.drop_columns(["model_label", "shard"]).to_pandas(types_mapper=_nullable)
    frame["parts"] = pd.Series(table.column("parts").to_pylist(), dtype=object)  # lists of dicts
    return frame


def _nullable(kind: pa.DataType) -> object:
    return {pa.string(): pd.StringDtype(), pa.int32(): pd.Int32Dtype(),
            pa.float32(): pd.Float32Dtype(), pa.bool_(): pd.BooleanDtype()}.get(kind)
