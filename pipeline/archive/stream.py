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

import ctypes
import math
import posixpath
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

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

BATCH_ROWS = 8192  # rows per spill batch: the first pass holds one batch of Python rows
CROP_KEYS = ("crop_x0", "crop_y0", "crop_x1", "crop_y1", "crop_units")
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
    counts: dict[str, int] = field(default_factory=dict)  # archive items that make no row

    def add(self, columns: dict[str, list]) -> None:
        paths, ids = columns["path"], columns["image_id"]
        has_id = np.array([i is not None for i in ids], dtype=bool)
        self.has_path.append(np.array([p is not None for p in paths], dtype=bool))
        self.refused.append(np.array([e is not None for e in columns["manifest_error"]],
                                     dtype=bool))
        self.has_id.append(has_id)
        self.path_key.append(_hashes([_file_key(p, columns, i) if p else None
                                      for i, p in enumerate(paths)]))
        self.given_id.append(_hashes(ids))
        # rows without an id take it from their path: kept for those rows only
        derived = [p for p, i in zip(paths, ids, strict=True) if i is None]
        self.raw_path.append(_hashes(derived))
        self.stem.append(_hashes([image_id_from_path(p) if p else None for p in derived]))

    def done(self) -> dict[str, np.ndarray]:
        """The per-row arrays, each batch list emptied as it is joined (never both held)."""
        out = {}
        for name in ("has_path", "refused", "has_id", "path_key", "raw_path", "given_id",
                     "stem"):
            pieces = getattr(self, name)
            out[name] = np.concatenate(pieces) if pieces else np.zeros(0, np.uint64)
            pieces.clear()
        # raw_path and stem hold the rows without an id, in row order: spread them out
        for name in ("raw_path", "stem"):
            full = np.zeros(len(out["has_id"]), np.uint64)
            full[~out["has_id"].astype(bool)] = out[name]
            out[name] = full
        return out


def release_memory() -> None:
    """Hand freed memory back to the system: Arrow's pool and the C heap, where the first
    pass's many batch-sized arrays leave free but unreturned pages (glibc's ``malloc_trim``;
    elsewhere nothing to do)."""
    pa.default_memory_pool().release_unused()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _file_key(path: str, columns: dict[str, list], i: int) -> str:
    """What names one picture: the normalised path, and the crop of it a row explains (two
    detections of one frame are two pictures, the same file listed twice is one)."""
    crop = [columns[f"crop_{c}"][i] for c in ("x0", "y0", "x1", "y1")]
    key = posixpath.normpath(path)
    return key if crop[0] is None else f"{key}|{columns['crop_units'][i]}|{crop}"


def _first_rows(keys: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per row, the first row with the same key (itself when first; -1 where not valid), as
    int32 (a manifest has fewer than 2^31 rows)."""
    first = np.full(len(keys), -1, dtype=np.int32)
    rows = np.nonzero(valid)[0].astype(np.int32)
    if len(rows):
        _, index, inverse = np.unique(keys[rows], return_index=True, return_inverse=True)
        first[rows] = rows[index][inverse]
    return first


@dataclass
class _Decisions:
    """The row-by-row decisions of the second pass: derived ids, duplicate paths and ids. A hash
    match counts only once the strings of the two rows agree."""

    path_first: np.ndarray
    id_first: np.ndarray
    shared_stem: np.ndarray
    taken: np.ndarray  # every id's hash, sorted: what a renamed id must avoid
    path_heads: set[int]  # rows first to name a file a later row names again
    id_heads: set[int]  # rows first to use an id a later row uses again
    first_path_of: dict[int, tuple[str, str]] = field(default_factory=dict)  # (path, id)
    first_id_of: dict[int, tuple[str, str]] = field(default_factory=dict)  # (id, path)

    def row(self, i: int, record: dict, free: Callable[[str, np.ndarray], str]) -> None:
        """Decide row ``i``'s id and duplicate state (``record`` is edited in place)."""
        path = record["path"]
        if record["image_id"] is None:
            if path:
                record["image_id"] = path if self.shared_stem[i] else image_id_from_path(path)
            else:
                record["image_id"] = f"row-{i}"
        key = (_file_key(path, {c: [record[c]] for c in CROP_KEYS}, 0) if path else None)
        j = int(self.path_first[i])
        if j >= 0 and j != i and record["manifest_error"] is None:
            seen = self.first_path_of.get(j)
            if seen is not None and seen[0] == key:
                record["manifest_error"] = "DuplicatePath"
                record["manifest_message"] = f"the same file as row {j} (image id {seen[1]!r})"
        original = str(record["image_id"])
        j = int(self.id_first[i])
        if j != i and j in self.first_id_of and self.first_id_of[j][0] == original:
            name = free(original, self.taken)
            record["image_id"] = name
            if record["manifest_error"] is None:
                record["manifest_error"] = "DuplicateImageId"
                record["manifest_message"] = (f"image id {original!r} is already used by row {j}"
                                              f" ({self.first_id_of[j][1]!r}); renamed {name!r}")
        if i in self.path_heads:
            self.first_path_of[i] = (key, record["image_id"])
        if i in self.id_heads:
            self.first_id_of[i] = (original, path)


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
    counts: dict[str, int]  # archive items that make no row (empty camera-trap frames)
    _cleanup: tempfile.TemporaryDirectory | None = None
    _renamed: set[int] = field(default_factory=set)

    def close(self) -> None:
        if self._cleanup is not None:
            self._cleanup.cleanup()
            self._cleanup = None

    def batches(self, shard_size: int, rows_per_batch: int = BATCH_ROWS
                ) -> Iterator[pa.RecordBatch]:
        """The manifest rows (``ROWS`` schema) in batches of ``rows_per_batch``: the columns
        vectorised, the rare rows that need a decision (a derived id, a duplicate or the first
        row of one) one by one, in row order."""
        k, n = self.keys, self.rows
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
        index = np.arange(n, dtype=np.int32)
        path_first = _first_rows(k["path_key"], k["has_path"] & ~k["refused"])
        id_first = _first_rows(ids, np.ones(n, bool))
        path_dup = (path_first >= 0) & (path_first != index)
        id_dup = id_first != index
        special = ~k["has_id"] | path_dup | id_dup
        special[path_first[path_dup]] = True  # first rows of a duplicate: remembered
        special[id_first[id_dup]] = True
        decide = _Decisions(path_first, id_first, shared_stem, np.unique(ids),
                            set(path_first[path_dup].tolist()), set(id_first[id_dup].tolist()))
        del derived, ids, index, path_dup, id_dup
        start = 0
        with pa.ipc.open_file(self.spill) as spilled:
            for b in range(spilled.num_record_batches):
                batch = spilled.get_batch(b)
                stop = start + batch.num_rows
                table = self._finish(batch, start, special[start:stop], decide, shard_size)
                yield from table.to_batches(max_chunksize=rows_per_batch)
                start = stop

    def _finish(self, batch: pa.RecordBatch, start: int, special: np.ndarray,
                decide: _Decisions, shard_size: int) -> pa.Table:
        """One spill batch as manifest rows."""
        columns = {name: batch.column(name) for name in SPILL.names}
        rows = np.nonzero(special)[0]
        if len(rows):
            edited = {name: columns[name].to_numpy(zero_copy_only=False).copy()
                      for name in ("image_id", "manifest_error", "manifest_message")}
            for r, record in zip(rows.tolist(), batch.take(pa.array(rows)).to_pylist(),
                                 strict=True):
                decide.row(start + r, record, self._free)
                for name, values in edited.items():
                    values[r] = record[name]
            for name, values in edited.items():
                columns[name] = pa.array(values, pa.string())
        names = columns["label_name"]
        if self.rank is not None:
            ranked = pc.index_in(names, value_set=pa.array(self.names, pa.string()))
            columns["label"] = pc.coalesce(columns["label"], ranked.cast(pa.int32()))
        columns["model_label"] = self.mapper.map_array(names)
        columns["shard"] = pa.array((np.arange(start, start + batch.num_rows) // shard_size)
                                    .astype(np.int32))
        return pa.Table.from_pydict(columns, ROWS)

    def _free(self, original: str, taken: np.ndarray) -> str:
        """``original#k`` for the smallest k ≥ 2 that no row uses (nor an earlier renaming)."""
        k = 2
        while True:
            name = f"{original}#{k}"
            h = int(_hashes([name])[0])
            at = np.searchsorted(taken, h)
            if h not in self._renamed and not (at < len(taken) and taken[at] == h):
                self._renamed.add(h)
                return name
            k += 1


def _add_entry(columns: dict[str, list], entry: dict, keys: _Pass) -> None:
    """Append the reader's entry to the spill's columns: its known columns, the path as text,
    the lexical path check, the label name as text."""
    path = entry.get("path")
    if path is not None and not isinstance(path, str):
        path = None if isinstance(path, float) and math.isnan(path) else str(path)
    error, message = entry.get("manifest_error"), entry.get("manifest_message")
    if error is None:
        error, message = lexical_check(path)
    name = entry.get("label_name")
    if name is not None:
        name = str(name)
        keys.names.add(name)
    if entry.get("label") is not None:
        keys.labelled = True
    for column, values in columns.items():
        values.append(entry.get(column))
    columns["path"][-1], columns["label_name"][-1] = path, name
    columns["manifest_error"][-1], columns["manifest_message"][-1] = error, message


def open_manifest(source: str | Path, format: str | None, split: str,
                  images_root: str | Path | None, class_names: Sequence[str],
                  label_map: str | None = None, options: dict | None = None,
                  crop: str = "none") -> ManifestStream:
    """The first pass over ``source``'s entries (see the module's docstring); raises on
    archive-level problems only. ``options``: run settings a reader takes (by setting name);
    ``crop="boxes"``: rows with an annotated box are explained on the square crop around it.
    ``close()`` the result when done (it removes the spill)."""
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"source folder not found: {source}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    root_override = Path(images_root) if images_root is not None else None
    chosen = get_reader(format, source, root_override)
    taken = {keyword: (options or {})[setting] for keyword, setting in chosen.options
             if (options or {}).get(setting) is not None}
    folder = tempfile.TemporaryDirectory(prefix="fidoflow-manifest-")
    spill = Path(folder.name) / "rows.arrow"
    keys = _Pass()
    try:
        with pa.OSFile(str(spill), "wb") as sink, pa.ipc.new_file(sink, SPILL) as writer:
            columns: dict[str, list] = {name: [] for name in COLUMNS}
            count = 0

            def flush() -> None:
                keys.add(columns)
                writer.write_batch(pa.RecordBatch.from_pydict(columns, SPILL))
                for values in columns.values():
                    values.clear()

            for entry in chosen.entries(source, root_override, **taken):
                if "__count__" in entry:
                    keys.counts[entry["__count__"]] = keys.counts.get(entry["__count__"], 0) + 1
                    continue
                if crop == "boxes" and entry.get("box_x0") is not None \
                        and entry.get("crop_x0") is None:
                    entry = {**entry, "crop_units": "pixels",
                             **{f"crop_{k}": entry.get(f"box_{k}") for k in ("x0", "y0", "x1", "y1")}}
                if entry.get("split"):
                    keys.with_split = True
                if split != "all" and entry.get("split") != split:
                    continue
                _add_entry(columns, entry, keys)
                count += 1
                if count % BATCH_ROWS == 0:
                    flush()
            if count % BATCH_ROWS:
                flush()
            rows = count
        if split != "all" and not keys.with_split:
            raise ArchiveError(f"this {chosen.label} archive carries no train/test split; "
                               "use --split all")
        names = sorted(keys.names)
        mapping = read_label_map(label_map, class_names) if label_map else None
        rank = ({n: i for i, n in enumerate(names)} if chosen.rank_names and not keys.labelled
                else None)
        found = keys.done()
        release_memory()
        return ManifestStream(chosen, archive_root(source, root_override), spill, rows,
                              found, names, LabelMapper(names, class_names, mapping), rank,
                              dict(keys.counts), folder)
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
