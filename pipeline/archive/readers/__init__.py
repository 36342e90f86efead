"""Archive readers: turn a source into manifest rows (image id, relative path, labels, boxes,
parts, size, hash), one documented schema for every format (docs/manifest.md).

``read_archive(source, format=None, split="all")`` is the entry point; ``detect_format`` says
which reader a source gets when no format is forced.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fidoflow.pipeline.imaging.decode import IMAGE_SUFFIXES

from .coco import coco_json_in, read_coco
from .common import COLUMNS, SPLITS, ArchiveError, check_path, content_sha256, list_images
from .cub import is_cub, read_cub
from .folder import looks_like_imagefolder, read_folder, read_imagefolder
from .manifest import MANIFEST_SUFFIXES, manifest_in, read_manifest

FORMATS = ("folder", "imagefolder", "cub", "coco", "manifest")

__all__ = ["COLUMNS", "FORMATS", "SPLITS", "ArchiveError", "archive_root", "check_path",
           "content_sha256", "detect_format", "read_archive", "read_coco", "read_cub",
           "read_folder", "read_imagefolder", "read_manifest"]


def detect_format(source: str | Path) -> str:
    """The reader for ``source``, in this order:

    a ``.csv``/``.tsv``/``.parquet`` file -> manifest; a ``.json`` file -> coco;
    a folder with ``images.txt``, ``classes.txt`` and ``image_class_labels.txt`` -> cub;
    a folder holding exactly one COCO-looking top-level JSON -> coco;
    a folder with ``manifest.csv`` or ``manifest.parquet`` at the top -> manifest;
    a folder whose images all lie exactly one level down, in at least two folders -> imagefolder;
    any other folder -> folder.
    """
    source = Path(source)
    if source.is_file():
        suffix = source.suffix.lower()
        if suffix in MANIFEST_SUFFIXES:
            return "manifest"
        if suffix == ".json":
            return "coco"
        raise ArchiveError(f"{source} is a file but neither a manifest ({', '.join(MANIFEST_SUFFIXES)})"
                           " nor a COCO JSON file")
    if not source.is_dir():
        raise FileNotFoundError(f"source folder not found: {source}")
    if is_cub(source):
        return "cub"
    if coco_json_in(source) is not None:
        return "coco"
    if manifest_in(source) is not None:
        return "manifest"
    if looks_like_imagefolder(list_images(source, IMAGE_SUFFIXES)):
        return "imagefolder"
    return "folder"


def archive_root(source: str | Path, images_root: str | Path | None = None) -> Path:
    """The folder the manifest's paths are relative to: ``images_root`` when given, the
    folder of a manifest/JSON file, else the source folder itself."""
    if images_root is not None:
        return Path(images_root)
    source = Path(source)
    return source.parent if source.is_file() else source


def read_archive(source: str | Path, format: str | None = None, split: str = "all",
                 images_root: str | Path | None = None, workers: int = 4) -> pd.DataFrame:
    """Manifest rows of ``source`` in a deterministic order (see docs/manifest.md).

    ``format`` forces a reader (one of FORMATS); ``split`` keeps ``train`` or ``test`` rows
    only; ``images_root`` overrides where coco/manifest paths are relative to. Problems with
    single images never raise: they end up in ``manifest_error``/``manifest_message``.
    """
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"source folder not found: {source}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    fmt = format or detect_format(source)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if images_root is not None and fmt not in ("coco", "manifest"):
        raise ValueError("--images-root applies to the coco and manifest formats only")
    if fmt in ("folder", "imagefolder", "cub") and not source.is_dir():
        raise ArchiveError(f"the {fmt} format needs a folder as SOURCE, got the file {source}")
    if fmt == "folder":
        return read_folder(source, split, workers)
    if fmt == "imagefolder":
        return read_imagefolder(source, split, workers)
    if fmt == "cub":
        return read_cub(source, split, workers)
    if fmt == "coco":
        return read_coco(source, images_root, split, workers)
    return read_manifest(source, images_root, split, workers)
