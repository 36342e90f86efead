"""CSV or Parquet manifests written by people: one row per image, ``path`` relative to the
manifest's folder (or ``--images-root``).

Columns read (others are ignored): ``path`` (required), ``image_id``, ``label``, ``label_name``
(or ``class_name``), ``split``, a box as ``box_x0 box_y0 box_x1 box_y1`` or ``x y w h`` (pixels),
``seq_id``, ``location``, ``datetime``, ``empty``. Without ``label`` but with names, ``label`` is
the index of the name in sorted order.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .common import ArchiveError, finish

MANIFEST_SUFFIXES = (".csv", ".tsv", ".parquet", ".pq")
MANIFEST_NAMES = ("manifest.csv", "manifest.parquet")
TEXT_COLUMNS = ("path", "image_id", "label_name", "class_name", "split", "seq_id", "location",
                "datetime")


def manifest_in(folder: Path) -> Path | None:
    """``manifest.csv`` or ``manifest.parquet`` at the top of ``folder``, if exactly one."""
    found = [folder / name for name in MANIFEST_NAMES if (folder / name).is_file()]
    return found[0] if len(found) == 1 else None


def _load(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        sep = "\t" if suffix == ".tsv" else ","
        header = pd.read_csv(path, sep=sep, nrows=0)
        dtypes = {c: "string" for c in header.columns if c in TEXT_COLUMNS}
        return pd.read_csv(path, sep=sep, dtype=dtypes, keep_default_na=False, na_values=[""])
    except (OSError, ValueError, ImportError) as exc:
        raise ArchiveError(f"cannot read manifest {path}: {exc}") from exc


def _value(value: object) -> object:
    if value is None or value is pd.NA:
        return None
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return value.item() if hasattr(value, "item") else value


def read_manifest(source: Path, images_root: Path | None = None, split: str = "all",
                  workers: int = 4) -> pd.DataFrame:
    """Rows of a CSV/TSV/Parquet manifest (or the folder holding ``manifest.csv``/``.parquet``)."""
    source = Path(source)
    path = manifest_in(source) if source.is_dir() else source
    if path is None:
        raise ArchiveError(f"{source} holds no manifest.csv or manifest.parquet")
    table = _load(path)
    if "path" not in table.columns:
        raise ArchiveError(f"manifest {path} has no 'path' column (columns: "
                           f"{', '.join(map(str, table.columns))})")
    if "label_name" not in table.columns and "class_name" in table.columns:
        table = table.rename(columns={"class_name": "label_name"})
    if {"x", "y", "w", "h"} <= set(table.columns) and "box_x0" not in table.columns:
        for column in ("x", "y", "w", "h"):
            table[column] = pd.to_numeric(table[column], errors="coerce")
        table = table.assign(box_x0=table["x"], box_y0=table["y"],
                             box_x1=table["x"] + table["w"], box_y1=table["y"] + table["h"])
    if "label" not in table.columns and "label_name" in table.columns:
        names = sorted({str(n) for n in table["label_name"].dropna()})
        index = {n: i for i, n in enumerate(names)}
        table["label"] = [index.get(str(n)) if _value(n) is not None else None
                          for n in table["label_name"]]
    if "label" in table.columns:
        table["label"] = pd.to_numeric(table["label"], errors="coerce").astype("Int64")
    wanted = [c for c in ("image_id", "path", "label", "label_name", "split", "box_x0", "box_y0",
                          "box_x1", "box_y1", "seq_id", "location", "datetime", "empty")
              if c in table.columns]
    entries = [{k: _value(v) for k, v in zip(wanted, values)}
               for values in table[wanted].itertuples(index=False, name=None)]
    for entry in entries:
        if entry.get("image_id") is not None:
            entry["image_id"] = str(entry["image_id"])
        if entry.get("label_name") is not None:
            entry["label_name"] = str(entry["label_name"])
    root = Path(images_root) if images_root is not None else path.parent
    return finish(entries, root, split, "manifest", workers)
