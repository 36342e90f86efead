"""Plain folders (every image below the root, no labels) and ImageFolder trees (one sub-folder
per class: ``label`` is the index of the class name in sorted order)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fidoflow.pipeline.imaging.decode import IMAGE_SUFFIXES

from .common import ArchiveError, finish, list_images


def _require_dir(root: Path) -> None:
    if not root.is_dir():
        raise FileNotFoundError(f"source folder not found: {root}")


def read_folder(root: Path, split: str = "all", workers: int = 4) -> pd.DataFrame:
    """Every image file below ``root`` (recursive, sorted by relative path), no labels."""
    root = Path(root)
    _require_dir(root)
    links: list[str] = []
    files = list_images(root, IMAGE_SUFFIXES, links)
    entries = [{"path": rel} for rel in sorted(files + links)]
    return finish(entries, root, split, "folder", workers)


def looks_like_imagefolder(files: list[str]) -> bool:
    """Every image exactly one folder below the root, in at least two folders."""
    if not files:
        return False
    depths = {f.count("/") for f in files}
    return depths == {1} and len({f.split("/", 1)[0] for f in files}) >= 2


def read_imagefolder(root: Path, split: str = "all", workers: int = 4) -> pd.DataFrame:
    """``root/<class>/.../<image>``: the first folder below the root names the class.

    Classes are the first-level folders holding at least one image, indexed in sorted order
    (torchvision's ImageFolder convention). Images lying directly in the root get no label.
    """
    root = Path(root)
    _require_dir(root)
    links: list[str] = []
    files = list_images(root, IMAGE_SUFFIXES, links)
    classes = sorted({f.split("/", 1)[0] for f in files if "/" in f})
    if not classes:
        raise ArchiveError(f"{root} has no class sub-folders holding images")
    index = {name: i for i, name in enumerate(classes)}
    entries = []
    for rel in sorted(files + links):
        name = rel.split("/", 1)[0] if "/" in rel else None
        entries.append({"path": rel, "label": index.get(name), "label_name": name})
    return finish(entries, root, split, "imagefolder", workers)
