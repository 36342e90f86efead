"""What the readers share: the manifest's columns, image ids from paths, path checks (the
lexical one every row gets when the manifest is written, the filesystem one the worker that
opens the file makes), and listing a folder's images.
"""

from __future__ import annotations

import math
import os
import posixpath
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath

# Manifest columns a reader produces, with their pandas dtypes (the stream adds model_label and
# shard; a file's size, hash and dimensions are recorded by the worker that opens it).
COLUMNS: dict[str, str] = {
    "image_id": "string",
    "path": "string",
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
    "detection": "Int32",
    "detection_conf": "Float32",
    "crop_x0": "Float32",
    "crop_y0": "Float32",
    "crop_x1": "Float32",
    "crop_y1": "Float32",
    "crop_units": "string",
    "manifest_error": "string",
    "manifest_message": "string",
}
SPLITS = ("all", "train", "test")


def image_id_from_path(relative: str) -> str:
    """``a/b.jpg`` -> ``a/b``: the relative path without its suffix (as ``PurePosixPath``
    would say, on plain string operations for the common, already normal path)."""
    if "//" in relative or relative.startswith("./") or "/./" in relative \
            or relative.endswith(("/", "/.")):
        p = PurePosixPath(relative)
        return str(p.with_suffix("")) if p.suffix else relative
    head, _, name = relative.rpartition("/")
    dot = name.rfind(".")
    if dot <= 0 or dot == len(name) - 1:
        return relative
    return f"{head}/{name[:dot]}" if head else name[:dot]


def lexical_check(relative: object) -> tuple[str | None, str | None]:
    """(error_type, message) of a path refused by its text alone (no file is touched): no
    path, a NUL byte, an absolute path, ``..`` that climbs out of the root."""
    if relative is None or (isinstance(relative, float) and math.isnan(relative)) or relative == "":
        return "MissingPath", "the row gives no path"
    text = str(relative)
    if "\x00" in text:
        return "UnsafePath", "the path contains a NUL byte"
    if text.startswith(("/", "\\", "~")) or (len(text) > 1 and text[1] == ":"):
        return "UnsafePath", f"absolute path {text!r}: paths must be relative to the archive root"
    normal = posixpath.normpath(text)
    if normal == ".." or normal.startswith("../"):
        return "UnsafePath", f"{text!r} climbs out of the archive root"
    return None, None


def check_path(root_real: str, relative: object) -> tuple[str | None, str | None, str | None]:
    """(error_type, message, absolute path) for ``relative`` below the resolved root, as the
    worker that opens it checks it: the lexical refusals, links whose target lies outside the
    root, missing files and folders (reported, not opened)."""
    error, message = lexical_check(relative)
    if error is not None:
        return error, message, None
    text = str(relative)
    normal = posixpath.normpath(text)
    full = os.path.join(root_real, normal)
    real = os.path.realpath(full)
    if not real.startswith(root_real + os.sep):
        return "UnsafePath", f"{text!r} is a link to {real}, outside the archive root", None
    if not os.path.exists(real):
        return "MissingFile", f"{text!r} does not exist below the archive root", None
    if not os.path.isfile(real):
        return "MissingFile", f"{text!r} is not a regular file", None
    return None, None, real


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


def json_names(path: Path, peek: int, first: str, either: Sequence[str]) -> bool:
    """A JSON object whose first ``peek`` bytes name the key ``first`` and one of ``either``:
    the top of a file tells the formats apart (reading a 1 GB file to decide would be
    wasteful)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            head = fh.read(peek)
    except OSError:
        return False
    return head.lstrip().startswith("{") and f'"{first}"' in head and any(
        f'"{key}"' in head for key in either)


def one_json_in(folder: Path, looks: Callable[[Path], bool]) -> Path | None:
    """The one top-level JSON file of ``folder`` that ``looks`` right, if exactly one does."""
    found = [p for p in sorted(folder.glob("*.json")) if p.is_file() and looks(p)]
    return found[0] if len(found) == 1 else None


def read_images_json(path: Path, what: str) -> dict:
    """A JSON file whose top level is an object with an ``images`` list (COCO, MegaDetector),
    read whole; an ArchiveError naming the file otherwise (``what``: the format, for it)."""
    import json

    from .registry import ArchiveError

    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArchiveError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ArchiveError(f"{path} has no 'images' list: not {what}")
    return data
