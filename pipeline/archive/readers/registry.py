"""The archive readers, one registered function each: a reader turns a source into *entries*
(dicts with at least ``path``, relative to the archive root, plus what its format carries),
yielded one at a time, so that a million-row archive never sits in memory twice. What every
reader shares (ids, duplicates, labels, shards, the typed batches) is pipeline/archive/stream.py.

A reader registers with ``@reader(name, detect=..., order=...)``: ``detect(source)`` says
whether a source looks like its format, tried in ``order`` when no format is forced. A new
reader is one module in this folder (and its test); docs/manifest.md describes each.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

Entries = Iterator[dict]
EntriesOf = Callable[..., Entries]  # (source, images_root, **options) -> entries


class ArchiveError(ValueError):
    """The archive itself (not one image) cannot be read: missing or malformed metadata."""


@dataclass(frozen=True)
class Reader:
    """A registered archive format.

    ``folder``: its source must be a folder; ``images_root``: ``--images-root`` applies (the
    paths of a file source are relative to its folder by default); ``label``: how messages name
    the format; ``rank_names``: rows that carry a ``label_name`` but no ``label`` get the rank
    of their name among the archive's sorted names (a CSV written by a person); ``options``:
    the run settings it takes, by its keyword names (``threshold`` <- detection_threshold).

    An entry ``{"__count__": name}`` counts an archive item that makes no row (an empty
    camera-trap frame)."""

    name: str
    entries: EntriesOf
    detect: Callable[[Path], bool]
    order: int
    folder: bool = False
    images_root: bool = False
    label: str = ""
    rank_names: bool = False
    options: tuple[tuple[str, str], ...] = ()  # (keyword, run setting)


READERS: dict[str, Reader] = {}


def archive_root(source: str | Path, images_root: str | Path | None = None) -> Path:
    """The folder the manifest's paths are relative to: ``images_root`` when given, the
    folder of a manifest/JSON file, else the source folder itself."""
    if images_root is not None:
        return Path(images_root)
    source = Path(source)
    return source.parent if source.is_file() else source


def reader(name: str, *, detect: Callable[[Path], bool], order: int, folder: bool = False,
           images_root: bool = False, label: str = "", rank_names: bool = False,
           options: dict[str, str] | None = None) -> Callable[[EntriesOf], EntriesOf]:
    """Function decorator: register ``name``'s entries function."""
    def add(entries: EntriesOf) -> EntriesOf:
        if name in READERS:
            raise ValueError(f"archive format {name!r} registered twice")
        READERS[name] = Reader(name, entries, detect, order, folder, images_root,
                               label or name, rank_names, tuple((options or {}).items()))
        return entries
    return add


def detect_format(source: str | Path) -> str:
    """The reader for ``source``: the first registered one, by ``order``, whose ``detect``
    accepts it (docs/manifest.md lists the rules)."""
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"source folder not found: {source}")
    for entry in sorted(READERS.values(), key=lambda r: r.order):
        if entry.detect(source):
            return entry.name
    if source.is_file():
        raise ArchiveError(f"{source} is a file of no format fidoflow reads (a manifest "
                           ".csv/.tsv/.parquet, a COCO camera-trap or MegaDetector .json)")
    raise ArchiveError(f"no reader accepts {source}")


def get_reader(format: str | None, source: Path, images_root: Path | None) -> Reader:
    """The reader of ``source`` (forced or detected), its options checked."""
    name = format or detect_format(source)
    if name not in READERS:
        raise ValueError(f"unknown format {name!r}; expected one of {', '.join(READERS)}")
    chosen = READERS[name]
    if images_root is not None and not chosen.images_root:
        takers = ", ".join(r.name for r in READERS.values() if r.images_root)
        raise ValueError(f"--images-root applies to the {takers} formats only")
    if chosen.folder and not source.is_dir():
        raise ArchiveError(f"the {name} format needs a folder as SOURCE, got the file {source}")
    return chosen
