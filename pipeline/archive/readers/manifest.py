"""CSV or Parquet manifests written by people: one row per image, ``path`` relative to the
manifest's folder (or ``--images-root``), read in batches (a manifest of ten million rows never
sits in memory whole).

Columns read (others are ignored): ``path`` (required), ``image_id``, ``label``, ``label_name``
(or ``class_name``), ``split``, a box as ``box_x0 box_y0 box_x1 box_y1`` or ``x y w h`` (pixels),
``parts`` (visible part locations in pixels: a list of ``{name, x, y}``, in a CSV as that JSON
text), ``seq_id``, ``location``, ``datetime``, ``empty``. Without ``label`` but with names,
``label`` is the index of the name in sorted order (``rank_names``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from .registry import ArchiveError, Entries, reader

MANIFEST_SUFFIXES = (".csv", ".tsv", ".parquet", ".pq")
MANIFEST_NAMES = ("manifest.csv", "manifest.parquet")
TEXT_COLUMNS = ("path", "image_id", "label_name", "class_name", "split", "seq_id", "location",
                "datetime")
KEPT = ("image_id", "path", "label", "label_name", "split", "box_x0", "box_y0", "box_x1",
        "box_y1", "parts", "seq_id", "location", "datetime", "empty")
BATCH_ROWS = 8192  # rows read at once: a batch of Python rows at most


def manifest_in(folder: Path) -> Path | None:
    """``manifest.csv`` or ``manifest.parquet`` at the top of ``folder``, if exactly one."""
    found = [folder / name for name in MANIFEST_NAMES if (folder / name).is_file()]
    return found[0] if len(found) == 1 else None


def _is_manifest(source: Path) -> bool:
    if source.is_file():
        return source.suffix.lower() in MANIFEST_SUFFIXES
    return source.is_dir() and manifest_in(source) is not None


def _batches(path: Path) -> tuple[list[str], Iterator[pa.RecordBatch]]:
    """The manifest's column names and its rows in record batches."""
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            handle = pq.ParquetFile(path)
            return handle.schema_arrow.names, handle.iter_batches(BATCH_ROWS)
        delimiter = "\t" if suffix == ".tsv" else ","
        header = pcsv.open_csv(path, parse_options=pcsv.ParseOptions(delimiter=delimiter))
        names = header.schema.names
        types = {c: pa.string() for c in names if c in (*TEXT_COLUMNS, "parts")}
        stream = pcsv.open_csv(
            path, read_options=pcsv.ReadOptions(block_size=16 << 20),
            parse_options=pcsv.ParseOptions(delimiter=delimiter),
            convert_options=pcsv.ConvertOptions(column_types=types, strings_can_be_null=True,
                                                null_values=[""]))
        return names, iter(stream)
    except (OSError, ValueError, pa.ArrowInvalid) as exc:
        raise ArchiveError(f"cannot read manifest {path}: {exc}") from exc


def _number(value: object) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _label(value: object) -> int | None:
    number = _number(value)
    return None if number is None else int(number)


@reader("manifest", detect=_is_manifest, order=30, images_root=True, rank_names=True)
def manifest_entries(source: Path, images_root: Path | None = None) -> Entries:
    """Rows of a CSV/TSV/Parquet manifest (or the folder holding ``manifest.csv``/``.parquet``)."""
    source = Path(source)
    path = manifest_in(source) if source.is_dir() else source
    if path is None:
        raise ArchiveError(f"{source} holds no manifest.csv or manifest.parquet")
    names, batches = _batches(path)
    if "path" not in names:
        raise ArchiveError(f"manifest {path} has no 'path' column (columns: "
                           f"{', '.join(map(str, names))})")
    renamed = {"class_name": "label_name"} if "label_name" not in names else {}
    xywh = {"x", "y", "w", "h"} <= set(names) and "box_x0" not in names
    try:
        for batch in batches:
            for row in batch.to_pylist():
                for old, new in renamed.items():
                    row[new] = row.pop(old, None)
                if xywh:
                    x, y, w, h = (_number(row.get(k)) for k in ("x", "y", "w", "h"))
                    ok = None not in (x, y, w, h)
                    row.update(box_x0=x, box_y0=y, box_x1=x + w if ok else None,
                               box_y1=y + h if ok else None)
                entry = {k: row[k] for k in KEPT if row.get(k) is not None}
                if "label" in entry:
                    entry["label"] = _label(entry["label"])
                for key in ("image_id", "label_name", "path"):
                    if key in entry and not isinstance(entry[key], str):
                        entry[key] = _text(entry[key])
                if "parts" in entry:
                    entry["parts"] = _parts(entry["parts"], path)
                yield entry
    except (OSError, pa.ArrowInvalid) as exc:
        raise ArchiveError(f"cannot read manifest {path}: {exc}") from exc


def _parts(value: object, path: Path) -> list[dict]:
    """A row's part locations: a list of ``{name, x, y}`` (Parquet) or its JSON text (CSV)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ArchiveError(f"manifest {path}: a parts cell is no JSON list: {exc}") from None
    try:
        return [{"name": str(p["name"]), "x": float(p["x"]), "y": float(p["y"])} for p in value]
    except (KeyError, TypeError, ValueError):
        raise ArchiveError(f"manifest {path}: parts must list {{name, x, y}}, got "
                           f"{str(value)[:80]!r}") from None


def _text(value: object) -> str | None:
    """A non-text id or name as text: ``3`` rather than ``3.0`` for whole numbers."""
    if isinstance(value, float):
        return None if math.isnan(value) else (str(int(value)) if value.is_integer() else str(value))
    return str(value)
