"""COCO Camera Traps JSON (the LILA format): ``images``, ``annotations``, ``categories``.

One row per entry of ``images``, in the file's order. The label is the category most of the
image's non-empty annotations name (ties: the one annotated first); an image whose annotations
all name an "empty" category (``empty``/``blank``, any case) gets that category and
``empty = True``; an image with no annotation keeps ``label`` null and ``empty`` null. The box
is that of the first annotation of the chosen category that has one (COCO ``[x, y, w, h]`` in
pixels becomes ``box_x0..box_y1``). ``label`` is the category id as the file gives it.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from .common import json_names, one_json_in, read_images_json
from .registry import ArchiveError, Entries, reader

EMPTY_NAMES = {"empty", "blank"}
PEEK_BYTES = 4 << 20


def looks_like_coco(path: Path) -> bool:
    """A JSON file whose first few MiB name the ``images`` and ``annotations`` or
    ``categories`` keys (LILA files put them near the top)."""
    return json_names(path, PEEK_BYTES, "images", ("annotations", "categories"))


def coco_json_in(folder: Path) -> Path | None:
    """The one top-level JSON file of ``folder`` that looks like COCO, if exactly one does."""
    return one_json_in(folder, looks_like_coco)


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _is_coco(source: Path) -> bool:
    if source.is_file():
        return source.suffix.lower() == ".json"
    return source.is_dir() and coco_json_in(source) is not None


@reader("coco", detect=_is_coco, order=20, images_root=True, label="COCO")
def coco_entries(source: Path, images_root: Path | None = None) -> Entries:
    """``source``: the JSON file, or a folder holding exactly one. Image paths (``file_name``)
    are relative to ``images_root``, by default the JSON file's folder. The file is read whole
    (a LILA file of a million images is a few hundred MB of JSON)."""
    source = Path(source)
    json_path = source
    if source.is_dir():
        json_path = coco_json_in(source)
        if json_path is None:
            raise ArchiveError(f"{source} does not hold exactly one COCO camera-trap JSON file; "
                               "give the JSON file as SOURCE")
    data = read_images_json(json_path, "a COCO camera-trap file")
    categories = {}
    for cat in data.get("categories") or []:
        if isinstance(cat, dict) and "id" in cat:
            categories[cat["id"]] = str(cat.get("name", cat["id"]))
    by_image: dict[object, list[dict]] = {}
    for ann in data.get("annotations") or []:
        if isinstance(ann, dict) and "image_id" in ann:
            by_image.setdefault(ann["image_id"], []).append(ann)
    images = data.pop("images")
    for i, image in enumerate(images):
        images[i] = None  # each entry is freed as its row is made
        if not isinstance(image, dict):
            yield {"image_id": f"row-{i}", "path": None, "manifest_error": "BadEntry",
                   "manifest_message": f"images[{i}] is not an object"}
            continue
        entry = {
            "image_id": _text(image.get("id")),
            "path": _text(image.get("file_name")),
            "seq_id": _text(image.get("seq_id")),
            "location": _text(image.get("location")),
            "datetime": _text(image.get("datetime")),
            "split": _text(image.get("split")),
        }
        entry.update(_label(by_image.get(image.get("id"), []), categories))
        yield entry


def _label(annotations: list[dict], categories: dict) -> dict[str, object]:
    if not annotations:
        return {"n_annotations": 0}
    def is_empty(ann: dict) -> bool:
        return categories.get(ann.get("category_id"), "").strip().lower() in EMPTY_NAMES
    animals = [a for a in annotations if not is_empty(a)]
    pool = animals or annotations
    counts = Counter(a.get("category_id") for a in pool)
    best = max(counts.values())
    category = next(a.get("category_id") for a in pool if counts[a.get("category_id")] == best)
    out: dict[str, object] = {
        "n_annotations": len(annotations),
        "label": category if isinstance(category, int) else None,
        "label_name": categories.get(category, _text(category)),
        "empty": not animals,
    }
    for ann in pool:
        bbox = ann.get("bbox")
        if ann.get("category_id") == category and isinstance(bbox, list | tuple) and len(bbox) == 4:
            try:
                x, y, w, h = (float(v) for v in bbox)
            except (TypeError, ValueError):
                continue
            out.update(box_x0=x, box_y0=y, box_x1=x + w, box_y1=y + h)
            break
    return out
