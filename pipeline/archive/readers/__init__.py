"""Archive readers: turn a source into manifest rows (image id, relative path, labels, boxes,
parts), one documented schema for every format (docs/manifest.md). Each format is one
registered module (registry.py); importing this package registers them all.

``read_archive(source, format=None, split="all")`` gives the rows of a small archive as a
DataFrame; a run streams them (pipeline/archive/stream.py). ``detect_format`` says which reader
a source gets when no format is forced.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from . import coco, cub, folder, manifest, megadetector  # noqa: F401 - each registers a reader
from .common import COLUMNS, SPLITS, check_path
from .registry import READERS, ArchiveError, archive_root, detect_format

FORMATS = tuple(sorted(READERS, key=lambda name: READERS[name].order))  # detection order

__all__ = ["COLUMNS", "FORMATS", "SPLITS", "ArchiveError", "archive_root", "check_path",
           "detect_format", "read_archive"]


def read_archive(source: str | Path, format: str | None = None, split: str = "all",
                 images_root: str | Path | None = None) -> pd.DataFrame:
    """Manifest rows of ``source`` in a deterministic order (see docs/manifest.md).

    ``format`` forces a reader (one of FORMATS); ``split`` keeps ``train`` or ``test`` rows
    only; ``images_root`` overrides where coco/manifest paths are relative to. Problems with
    single images never raise: they end up in ``manifest_error``/``manifest_message``.
    """
    from fidoflow.pipeline.archive.stream import read_rows

    return read_rows(source, format, split, images_root)
