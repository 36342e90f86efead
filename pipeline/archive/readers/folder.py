"""Plain folders (every image below the root, no labels) and ImageFolder trees (one sub-folder
per class: ``label`` is the index of the class name in sorted order)."""

from __future__ import annotations

from pathlib import Path

from fidoflow.pipeline.imaging.decode import IMAGE_SUFFIXES

from .common import list_images
from .registry import ArchiveError, Entries, reader

OUTSIDE = {"manifest_error": "UnsafePath"}  # a link to a folder outside the root


def _listing(root: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(images, links to folders outside the root) below ``root``, sorted."""
    links: list[str] = []
    files = list_images(root, IMAGE_SUFFIXES, links)
    return tuple(files), tuple(sorted(links))


def _outside(rel: str) -> dict:
    return {"path": rel, **OUTSIDE,
            "manifest_message": f"{rel!r} is a link to a folder outside the archive root"}


def looks_like_imagefolder(files: tuple[str, ...] | list[str]) -> bool:
    """Every image exactly one folder below the root, in at least two folders."""
    if not files:
        return False
    depths = {f.count("/") for f in files}
    return depths == {1} and len({f.split("/", 1)[0] for f in files}) >= 2


def _is_imagefolder(source: Path) -> bool:
    return source.is_dir() and looks_like_imagefolder(_listing(source)[0])


@reader("folder", detect=Path.is_dir, order=50, folder=True)
def folder_entries(root: Path, images_root: Path | None = None) -> Entries:
    """Every image file below ``root`` (recursive, sorted by relative path), no labels."""
    files, links = _listing(Path(root))
    outside = set(links)
    for rel in sorted((*files, *links)):
        yield _outside(rel) if rel in outside else {"path": rel}


@reader("imagefolder", detect=_is_imagefolder, order=40, folder=True)
def imagefolder_entries(root: Path, images_root: Path | None = None) -> Entries:
    """``root/<class>/.../<image>``: the first folder below the root names the class.

    Classes are the first-level folders holding at least one image, indexed in sorted order
    (torchvision's ImageFolder convention). Images lying directly in the root get no label.
    """
    files, links = _listing(Path(root))
    classes = sorted({f.split("/", 1)[0] for f in files if "/" in f})
    if not classes:
        raise ArchiveError(f"{root} has no class sub-folders holding images")
    index = {name: i for i, name in enumerate(classes)}
    outside = set(links)
    for rel in sorted((*files, *links)):
        name = rel.split("/", 1)[0] if "/" in rel else None
        entry = _outside(rel) if rel in outside else {"path": rel}
        yield {**entry, "label": index.get(name), "label_name": name}
