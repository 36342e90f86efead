"""MegaDetector batch output (format 1.x): one manifest row per detection, explained on its
square crop of the frame.

The file's ``images`` list holds per frame ``file`` (relative to the JSON's folder, or
``--images-root``) and ``detections``: ``category`` (a key of ``detection_categories``, "1"
animal, "2" person, "3" vehicle), ``conf`` and ``bbox`` = [x_min, y_min, width, height] as
fractions of the frame, origin top left. A frame MegaDetector could not read has ``failure``
set (and ``detections`` null): it becomes one refused row (``DetectorFailure``). A detection
becomes a row when its category is one of ``detection_categories`` (names or keys; default
``animal``) and its confidence is at least ``detection_threshold`` (default 0.2); a frame with
none is *empty*: counted (``empty_frames``), not explained.

Rows are keyed by frame and detection (``image_id`` = ``<frame id>#<k>``, k the detection's
index in the file); ``path`` is the frame, ``detection``, ``detection_conf`` and the ``crop_*``
columns (fractions of the frame) carry the detection. The worker that opens the frame cuts the
tightest square around the box (MegaDetector's own cropping), clipped to the frame.
"""

from __future__ import annotations

from pathlib import Path

from .common import image_id_from_path, json_names, one_json_in, read_images_json
from .registry import ArchiveError, Entries, reader

PEEK_BYTES = 1 << 20
DEFAULT_CATEGORIES = ("animal",)
EMPTY = {"__count__": "empty_frames"}  # the stream counts these instead of making rows


def looks_like_megadetector(path: Path) -> bool:
    """A JSON file whose first MiB names MegaDetector's ``detection_categories`` or a
    ``detections`` list."""
    return json_names(path, PEEK_BYTES, "images", ("detection_categories", "detections"))


def _is_megadetector(source: Path) -> bool:
    if source.is_file():
        return source.suffix.lower() == ".json" and looks_like_megadetector(source)
    return source.is_dir() and _json_in(source) is not None


def _json_in(folder: Path) -> Path | None:
    return one_json_in(folder, looks_like_megadetector)


def wanted_categories(names: dict[str, str], asked: str | tuple[str, ...]) -> set[str]:
    """The category keys to explain: ``asked`` names (or keys), comma separated."""
    asked = tuple(a.strip() for a in (asked.split(",") if isinstance(asked, str) else asked)
                  if a.strip())
    keys = {key for key, name in names.items() if name in asked or key in asked}
    unknown = [a for a in asked if a not in names and a not in names.values()]
    if unknown:
        raise ArchiveError(f"no detection category {', '.join(unknown)}; this file has "
                           + ", ".join(f"{k} ({v})" for k, v in sorted(names.items())))
    return keys


@reader("megadetector", detect=_is_megadetector, order=15, images_root=True,
        label="MegaDetector", options={"threshold": "detection_threshold",
                                       "categories": "detection_categories"})
def megadetector_entries(source: Path, images_root: Path | None = None,
                         threshold: float = 0.2,
                         categories: str | tuple[str, ...] = DEFAULT_CATEGORIES) -> Entries:
    """One entry per kept detection, a refused one per failed frame, a count per empty one."""
    source = Path(source)
    path = _json_in(source) if source.is_dir() else source
    if path is None:
        raise ArchiveError(f"{source} holds no MegaDetector output JSON")
    data = read_images_json(path, "MegaDetector output")
    names = {str(k): str(v) for k, v in (data.get("detection_categories") or
                                         {"1": "animal", "2": "person", "3": "vehicle"}).items()}
    keep = wanted_categories(names, categories)
    for i, frame in enumerate(data.pop("images")):
        if not isinstance(frame, dict) or not isinstance(frame.get("file"), str):
            yield {"image_id": f"row-{i}", "path": None, "manifest_error": "BadEntry",
                   "manifest_message": f"images[{i}] has no file"}
            continue
        file = frame["file"]
        frame_id = image_id_from_path(file)
        if frame.get("failure"):
            yield {"image_id": frame_id, "path": file, "manifest_error": "DetectorFailure",
                   "manifest_message": f"MegaDetector could not read it: {frame['failure']}"}
            continue
        kept = 0
        for k, detection in enumerate(frame.get("detections") or []):
            if not _keep(detection, keep, threshold):
                continue
            x, y, w, h = (float(v) for v in detection["bbox"])
            kept += 1
            yield {"image_id": f"{frame_id}#{k}", "path": file, "detection": k,
                   "detection_conf": float(detection["conf"]),
                   "label_name": names.get(str(detection["category"])),
                   "crop_x0": x, "crop_y0": y, "crop_x1": x + w, "crop_y1": y + h,
                   "crop_units": "fraction"}
        if not kept:
            yield dict(EMPTY)


def _keep(detection: object, categories: set[str], threshold: float) -> bool:
    if not isinstance(detection, dict):
        return False
    bbox = detection.get("bbox")
    try:
        conf = float(detection.get("conf", 0))
    except (TypeError, ValueError):
        return False
    return (str(detection.get("category")) in categories and conf >= threshold
            and isinstance(bbox, list | tuple) and len(bbox) == 4)
