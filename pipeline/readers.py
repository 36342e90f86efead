"""Archive readers: turn a source into manifest rows (image id, relative path, labels, size, hash)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
from PIL import Image

from .images import IMAGE_SUFFIXES


def content_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def image_size(path: Path) -> tuple[int | None, int | None]:
    """Width and height from the header alone; None when the file is no readable image."""
    try:
        with Image.open(path) as img:
            return img.size
    except Exception:
        return None, None


def describe(root: Path, relative: str) -> dict[str, object]:
    """The manifest columns every reader shares, for one file below ``root``."""
    path = root / relative
    width, height = image_size(path)
    return {
        "image_id": relative.rsplit(".", 1)[0],
        "path": relative,
        "width": width,
        "height": height,
        "sha256": content_sha256(path),
    }


def read_folder(root: Path) -> pd.DataFrame:
    """Every image file below ``root`` (recursive, sorted), no labels."""
    if not root.is_dir():
        raise FileNotFoundError(f"source folder not found: {root}")
    files = sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    rows = [describe(root, rel) for rel in files]
    frame = pd.DataFrame(rows, columns=["image_id", "path", "width", "height", "sha256"])
    for column in ("label", "label_name", "split"):
        frame[column] = None
    return frame
