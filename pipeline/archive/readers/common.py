"""What every reader shares: safe paths, header sizes, streaming hashes, duplicates, the frame.

A reader lists *entries* (dicts with at least ``path``, relative to the archive root, plus the
metadata its format carries); ``finish`` turns them into manifest rows: it filters the split,
refuses unsafe and missing paths (a ``manifest_error`` on the row: the row is kept, the file is
never opened), reads each remaining file once (sha256 in 1 MiB blocks, width and height from the
header), and marks duplicate paths and image ids.
"""

from __future__ import annotations

import hashlib
import math
import os
import posixpath
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

import pandas as pd
from PIL import Image

from fidoflow.pipeline.imaging.decode import oriented_size

# Manifest columns a reader produces, with their pandas dtypes (stages add model_label, shard).
COLUMNS: dict[str, str] = {
    "image_id": "string",
    "path": "string",
    "width": "Int32",
    "height": "Int32",
    "sha256": "string",
    "label": "Int32",
    "label_name": "string",
    "split": "string",
    "box_x0": "Float32",
    "box_y0": "Float32",
    "box_x1": "Float32",
    "box_y1": "Float32",
    "parts": "object",  # list of {"name", "x", "y"} (visible parts only) or None
    "empty": "boolean",
    "seq_id": "string",
    "location": "string",
    "datetime": "string",
    "n_annotations": "Int32",
    "manifest_error": "string",
    "manifest_message": "string",
}
SPLITS = ("all", "train", "test")
HASH_BLOCK = 1 << 20


class ArchiveError(ValueError):
    """The archive itself (not one image) cannot be read: missing or malformed metadata."""


def image_id_from_path(relative: str) -> str:
    """``a/b.jpg`` -> ``a/b``: the relative path without its suffix."""
    p = PurePosixPath(relative)
    return str(p.with_suffix("")) if p.suffix else relative


def check_path(root_real: str, relative: object) -> tuple[str | None, str | None, str | None]:
    """(error_type, message, absolute path) for ``relative`` below the resolved root.

    Refused: no path, absolute paths, ``..`` that climbs out, and links whose target lies
    outside the root; missing files and folders are reported, not opened.
    """
    if relative is None or (isinstance(relative, float) and math.isnan(relative)) or relative == "":
        return "MissingPath", "the row gives no path", None
    text = str(relative)
    if "\x00" in text:
        return "UnsafePath", "the path contains a NUL byte", None
    if text.startswith(("/", "\\", "~")) or (len(text) > 1 and text[1] == ":"):
        return "UnsafePath", f"absolute path {text!r}: paths must be relative to the archive root", None
    normal = posixpath.normpath(text)
    if normal == ".." or normal.startswith("../"):
        return "UnsafePath", f"{text!r} climbs out of the archive root", None
    full = os.path.join(root_real, normal)
    real = os.path.realpath(full)
    if not real.startswith(root_real + os.sep):
        return "UnsafePath", f"{text!r} is a link to {real}, outside the archive root", None
    if not os.path.exists(real):
        return "MissingFile", f"{text!r} does not exist below the archive root", None
    if not os.path.isfile(real):
        return "MissingFile", f"{text!r} is not a regular file", None
    return None, None, real


def describe_file(path: str) -> dict[str, object]:
    """sha256 (streamed) and the displayed width and height (header only) of one file."""
    with open(path, "rb") as fh:
        digest = hashlib.file_digest(fh, "sha256") if hasattr(hashlib, "file_digest") else None
        if digest is None:  # pragma: no cover - Python < 3.11
            digest = hashlib.sha256()
            for block in iter(lambda: fh.read(HASH_BLOCK), b""):
                digest.update(block)
        fh.seek(0)
        width = height = None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with Image.open(fh) as img:
                    width, height = oriented_size(img)
        except Exception:  # noqa: BLE001, S110 - not an image or a bomb: decoding reports it
            pass
    return {"sha256": digest.hexdigest(), "width": width, "height": height}


def content_sha256(path: Path) -> str:
    """sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def filter_split(entries: list[dict], split: str, format_name: str) -> list[dict]:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if split == "all":
        return entries
    if not any(e.get("split") for e in entries):
        raise ArchiveError(f"this {format_name} archive carries no train/test split; "
                           "use --split all")
    return [e for e in entries if e.get("split") == split]


def finish(entries: list[dict], root: Path, split: str = "all", format_name: str = "archive",
           workers: int = 4) -> pd.DataFrame:
    """Manifest rows for ``entries`` below ``root``: checked, described, deduplicated, typed.
    ``entries`` is consumed (emptied as its rows are built): an archive of a million images
    must not hold two sets of per-row records at once."""
    entries = filter_split(entries, split, format_name)
    root_real = os.path.realpath(root)
    rows: list[dict] = []
    to_describe: list[tuple[int, str]] = []
    derived = Counter(image_id_from_path(str(e["path"])) for e in entries
                      if e.get("image_id") is None and isinstance(e.get("path"), str) and e["path"])
    entries.reverse()  # consumed from the end: each record is freed as its row is made
    while entries:
        entry = entries.pop()
        # only the fields this row has (typed_frame fills the rest): a row of a million
        # holds ten keys, not every column
        row = {"path": None, "image_id": None, "manifest_error": None, "manifest_message": None}
        row.update({k: v for k, v in entry.items() if k in COLUMNS})
        if row["path"] is not None and not isinstance(row["path"], str):
            row["path"] = None if pd.isna(row["path"]) else str(row["path"])
        if row["image_id"] is None and row["path"]:
            # a/b.jpg -> a/b; when a/b.png exists too, both keep their suffix
            stem = image_id_from_path(row["path"])
            row["image_id"] = stem if derived[stem] == 1 else row["path"]
        if row["manifest_error"] is None:
            error, message, real = check_path(root_real, row["path"])
            row["manifest_error"], row["manifest_message"] = error, message
            if real is not None:
                to_describe.append((len(rows), real))
        rows.append(row)
    for (i, _), info in zip(to_describe, _map(describe_file, [p for _, p in to_describe], workers)):
        rows[i].update(info)
    mark_duplicates(rows)
    return typed_frame(rows)


def _map(func, items: Sequence[str], workers: int, chunk: int = 256) -> Iterable[dict]:
    """``func`` over ``items`` in order; threads overlap file reads (hashing releases the GIL).
    Items go to the threads in chunks: one future per item cost more than a small file's read."""
    if workers <= 1 or len(items) < 8:
        return map(func, items)
    chunks = [items[i:i + chunk] for i in range(0, len(items), chunk)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return [result for part in pool.map(lambda part: [func(x) for x in part], chunks)
                for result in part]


def mark_duplicates(rows: list[dict]) -> None:
    """Later rows naming a file already listed, or an image id already used, become errors;
    a repeated (or missing) image id is made unique (``id#2``, ...) so the id stays a key."""
    first_path: dict[str, int] = {}
    for i, row in enumerate(rows):
        if row["manifest_error"] is None and row["path"]:
            key = posixpath.normpath(row["path"])
            if key in first_path:
                j = first_path[key]
                row["manifest_error"] = "DuplicatePath"
                row["manifest_message"] = (f"the same file as row {j} (image id "
                                           f"{rows[j]['image_id']!r})")
            else:
                first_path[key] = i
    used: dict[str, int] = {}
    taken = {str(r["image_id"]) for r in rows if r["image_id"] is not None}
    for i, row in enumerate(rows):
        original = row["image_id"]
        if original is None:
            original = f"row-{i}"
            row["image_id"] = original
        original = str(original)
        if original not in used:
            used[original] = i
            row["image_id"] = original
            continue
        k = 2
        while f"{original}#{k}" in taken:
            k += 1
        row["image_id"] = f"{original}#{k}"
        taken.add(row["image_id"])
        if row["manifest_error"] is None:
            j = used[original]
            row["manifest_error"] = "DuplicateImageId"
            row["manifest_message"] = (f"image id {original!r} is already used by row {j} "
                                       f"({rows[j]['path']!r}); renamed {row['image_id']!r}")


def typed_frame(rows: list[dict]) -> pd.DataFrame:
    """Rows as a DataFrame with every manifest column in the documented order and dtypes.
    Built column by column from ``rows``, which are freed before the columns are typed (the
    records of a million rows weigh about a gigabyte)."""
    values = {column: [row.get(column) for row in rows] for column in COLUMNS}
    rows.clear()
    columns = {}
    for column, dtype in COLUMNS.items():
        raw = values.pop(column)
        if dtype == "object":
            columns[column] = pd.Series(raw, dtype=object)
        else:
            columns[column] = pd.Series(pd.array(
                [None if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in raw],
                dtype=dtype))
    return pd.DataFrame(columns)


def list_images(root: Path, suffixes: Sequence[str],
                outside_links: list[str] | None = None) -> list[str]:
    """Relative POSIX paths of files below ``root`` with an image suffix, sorted.

    Links to folders inside the root are followed once (a loop is cut). Links to folders
    outside it are not walked: their relative paths are appended to ``outside_links`` so that
    the reader can list them as refused rows instead of leaving them out silently.
    """
    found: list[str] = []
    seen: set[str] = set()
    wanted = tuple(s.lower() for s in suffixes)
    root_real = os.path.realpath(root)
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        relative_folder = os.path.relpath(folder, root)
        kept = []
        for name in sorted(dirs):
            target = os.path.realpath(os.path.join(folder, name))
            if target == root_real or target.startswith(root_real + os.sep):
                kept.append(name)
            elif outside_links is not None:
                rel = name if relative_folder == "." else f"{relative_folder}/{name}"
                outside_links.append(rel.replace(os.sep, "/"))
        dirs[:] = kept
        for name in files:
            if name.lower().endswith(wanted):
                rel = name if relative_folder == "." else f"{relative_folder}/{name}"
                found.append(rel.replace(os.sep, "/"))
    return sorted(found)
