"""CUB-200-2011: ``images.txt``, ``classes.txt``, ``image_class_labels.txt`` (required),
``train_test_split.txt``, ``bounding_boxes.txt``, ``parts/parts.txt`` + ``parts/part_locs.txt``
(used when present). Ids in the files are 1-based; ``label`` is 0-based (class id - 1).
"""

from __future__ import annotations

from pathlib import Path

from .registry import ArchiveError, Entries, reader

REQUIRED = ("images.txt", "classes.txt", "image_class_labels.txt")


def is_cub(root: Path) -> bool:
    return root.is_dir() and all((root / name).is_file() for name in REQUIRED)


def _lines(path: Path, fields: int) -> list[tuple[int, list[str]]]:
    """(line number, fields) of a whitespace-separated file; the last field keeps its spaces."""
    out = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            parts = line.split(maxsplit=fields - 1)
            if len(parts) != fields:
                raise ArchiveError(f"{path.name} line {number}: expected {fields} fields, "
                                   f"got {line!r}")
            out.append((number, parts))
    return out


def _int(path: Path, number: int, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ArchiveError(f"{path.name} line {number}: {text!r} is not an integer id") from None


def _float(path: Path, number: int, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ArchiveError(f"{path.name} line {number}: {text!r} is not a number") from None


@reader("cub", detect=is_cub, order=10, folder=True, label="CUB")
def cub_entries(root: Path, images_root: Path | None = None) -> Entries:
    """One row per line of images.txt, in its order; paths ``images/<class>/<file>``."""
    root = Path(root)
    missing = [name for name in REQUIRED if not (root / name).is_file()]
    if missing:
        raise ArchiveError(f"{root} is no CUB-200-2011 tree: missing {', '.join(missing)}")
    images = [(_int(root / "images.txt", n, f[0]), f[1]) for n, f in _lines(root / "images.txt", 2)]
    classes = {_int(root / "classes.txt", n, f[0]): f[1]
               for n, f in _lines(root / "classes.txt", 2)}
    labels = {_int(root / "image_class_labels.txt", n, f[0]):
              _int(root / "image_class_labels.txt", n, f[1])
              for n, f in _lines(root / "image_class_labels.txt", 2)}
    splits: dict[int, str] = {}
    if (root / "train_test_split.txt").is_file():
        path = root / "train_test_split.txt"
        splits = {_int(path, n, f[0]): "train" if _int(path, n, f[1]) == 1 else "test"
                  for n, f in _lines(path, 2)}
    boxes: dict[int, tuple[float, ...]] = {}
    if (root / "bounding_boxes.txt").is_file():
        path = root / "bounding_boxes.txt"
        for n, f in _lines(path, 5):
            x, y, w, h = (_float(path, n, v) for v in f[1:])
            boxes[_int(path, n, f[0])] = (x, y, x + w, y + h)
    parts = _read_parts(root)
    for image_id, relative in images:
        class_id = labels.get(image_id)
        box = boxes.get(image_id, (None,) * 4)
        yield {
            "image_id": str(image_id),
            "path": f"images/{relative}",
            "label": None if class_id is None else class_id - 1,
            "label_name": classes.get(class_id) if class_id is not None else None,
            "split": splits.get(image_id),
            "box_x0": box[0], "box_y0": box[1], "box_x1": box[2], "box_y1": box[3],
            "parts": parts.get(image_id, []) if parts is not None else None,
        }


def _read_parts(root: Path) -> dict[int, list[dict]] | None:
    """Visible part locations per image id, ``None`` when the tree has no parts files."""
    names_path, locs_path = root / "parts" / "parts.txt", root / "parts" / "part_locs.txt"
    if not (names_path.is_file() and locs_path.is_file()):
        return None
    names = {_int(names_path, n, f[0]): f[1] for n, f in _lines(names_path, 2)}
    out: dict[int, list[dict]] = {}
    for n, f in _lines(locs_path, 5):
        image_id, part_id = _int(locs_path, n, f[0]), _int(locs_path, n, f[1])
        x, y, visible = (_float(locs_path, n, v) for v in f[2:])
        if visible:
            out.setdefault(image_id, []).append(
                {"name": names.get(part_id, str(part_id)), "x": x, "y": y})
    return out
