"""What the report shows, chosen from a run's tables: mean curves per method, the gallery (which
images, with which maps, crop boxes, captions and graph roots), the flipped examples and the
header. The caller supplies the pictures and the maps (``Pictures``, ``MapsOf``), so this works
on any run folder or none; ``pipeline.analysis.report`` renders the result."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from fidoflow.pipeline.analysis.records import BASELINE_METHOD
from fidoflow.pipeline.analysis.report import (
    ConceptItem,
    Curves,
    FlipItem,
    FrameItem,
    GalleryItem,
    GraphRoot,
    MethodMaps,
    draw_parts,
    overlay,
    thumbnail,
)
from fidoflow.pipeline.imaging.decode import DecodeLimits
from fidoflow.pipeline.imaging.views import decode_row, original_size, view_box

if TYPE_CHECKING:
    from fidoflow.pipeline.config import AnalysisConfig, RunConfig

log = logging.getLogger(__name__)
GALLERY_SIDE = 224  # longest side of a gallery thumbnail, pixels
FLIP_SIDE = 150  # and of a flip example's
FRAME_SIDE = 480  # and of a camera-trap frame with its detections' masks
Frame = tuple[float, float, float]  # original pixels -> thumbnail pixels: scale, offset x, y
RowsById = dict[str, tuple[int, dict]]  # image_id -> (manifest row number, manifest row)
Pictures = Callable[[dict, int], tuple[np.ndarray, Frame]]  # (row, longest) -> thumb, frame
MapsOf = Callable[[str, int], dict[str, np.ndarray]]  # (method, manifest row) -> maps by name


def mean_curves(metrics: pd.DataFrame) -> dict[str, Curves]:
    """Mean deletion/insertion curve per method; the x axis is the fraction of pixels changed
    (step k of s changes floor(k·HW/s) pixels: k/s to within one pixel)."""
    curves = {}
    for method, cell in metrics.groupby("method", sort=True):
        deletion = np.stack(cell["deletion_curve"].map(np.asarray).to_list())
        insertion = np.stack(cell["insertion_curve"].map(np.asarray).to_list())
        steps = deletion.shape[1] - 1
        curves[str(method)] = Curves(np.linspace(0, 1, steps + 1), deletion.mean(0),
                                     insertion.mean(0), len(cell))
    return curves


def picture_frame(path: Path, row: dict, limits: DecodeLimits, input_size: tuple[int, int],
                  resize: str, longest: int) -> tuple[np.ndarray, Frame]:
    """Thumbnail of the part of a picture (or of the row's crop) the model saw, and the map
    from the file's original pixels to thumbnail pixels."""
    img, region = decode_row(path, row, limits, longest)
    width, _ = original_size(img)
    vx0, vy0, vx1, vy1 = view_box(img.size, input_size, resize)
    seen = img.crop((int(vx0), int(vy0), int(vx1), int(vy1))) if (vx0, vy0) != (0, 0) or (
        vx1, vy1) != img.size else img
    thumb, t = thumbnail(np.asarray(seen), longest)
    r = img.size[0] / width  # decoded pixels per original pixel
    rx0, ry0 = (region[0], region[1]) if region is not None else (0.0, 0.0)
    return thumb, (r * t, (rx0 * r + vx0) * t, (ry0 * r + vy0) * t)


def frame_items(rows_by_id: RowsById, method: str, count: int, whole: Callable[[dict, int],
                tuple[np.ndarray, float]], crops: Callable[[int], tuple[float, ...]],
                maps_of: MapsOf) -> list[FrameItem]:
    """Up to ``count`` camera-trap frames (rows that are detections of a frame), each with
    every detection's joint map of ``method`` pasted into its crop: the masks back in the
    frame. ``whole(row, longest)``: the frame's thumbnail and its scale from original pixels;
    ``crops(i)``: manifest row i's crop box in original pixels."""
    frames: dict[str, list[tuple[int, dict]]] = {}
    for i, row in sorted(rows_by_id.values(), key=lambda e: e[0]):
        if row.get("detection") is not None and row.get("manifest_error") is None:
            frames.setdefault(str(row["path"]), []).append((i, row))
    items = []
    for path in sorted(frames)[:count]:
        detections = frames[path]
        try:
            picture, scale = whole(detections[0][1], FRAME_SIDE)
        except Exception as exc:  # noqa: BLE001 - a frame that vanished since: leave it out
            log.warning("report: frame %s left out: %s", path, exc)
            continue
        pasted = []
        for i, row in detections:
            box = crops(i)
            if box is None or np.isnan(box).any():
                continue
            pasted.append((tuple(v * scale for v in box), maps_of(method, i)["joint"],
                           (f"#{row['detection']} {row.get('label_name') or ''} "
                           f"{row.get('detection_conf') or 0:.2f}")))
        items.append(FrameItem(path, picture, pasted))
    return items


def box_in(frame: Frame, record: pd.Series) -> tuple[float, ...] | None:
    """A ``reclassify`` row's crop box (original pixels) in thumbnail pixels; None without."""
    values = [getattr(record, c, None) for c in ("crop_x0", "crop_y0", "crop_x1", "crop_y1")]
    if any(v is None or pd.isna(v) for v in values):
        return None
    s, ox, oy = frame
    x0, y0, x1, y1 = values
    return x0 * s - ox, y0 * s - oy, x1 * s - ox, y1 * s - oy


def graph_roots(nodes: pd.DataFrame) -> dict[str, list[GraphRoot]]:
    """One image's ``sag`` rows as roots with their children, per method."""
    out: dict[str, list[GraphRoot]] = {}
    for method, cell in nodes.groupby("method", sort=True):
        roots = cell[cell["root"]].sort_values("node")
        out[str(method)] = [GraphRoot(
            int(r["grid"]), [int(p) for p in r["patches"]], float(r["probability"]),
            [([int(p) for p in c["patches"]], float(c["probability"]))
             for _, c in cell[cell["parent"] == r["node"]].iterrows()])
            for _, r in roots.iterrows()]
    return out


def baseline(reclassified: pd.DataFrame) -> pd.DataFrame:
    """The re-classification baseline's rows, by image id."""
    return reclassified[reclassified["method"] == BASELINE_METHOD].set_index("image_id")


def concept_maps(maps: dict[str, np.ndarray], rows: pd.DataFrame, method: str
                 ) -> MethodMaps:
    """A concept method's maps of one image: ``joint`` and the concepts its target class has,
    each titled with its contribution (``rows``: the image's ``concepts`` rows)."""
    mine = rows[rows["method"] == method].sort_values("concept")
    kept = {"joint": maps["joint"]} | {f"c{int(r.concept)}": maps[f"c{int(r.concept)}"]
                                       for r in mine.itertuples() if f"c{int(r.concept)}" in maps}
    titles = {f"c{int(r.concept)}": f"{method} · c{int(r.concept)} {r.contribution:+.2f}"
              for r in mine.itertuples()}
    return MethodMaps(kept, titles=titles)


def gallery_items(methods: Sequence[str], count: int, seed: int, rows_by_id: RowsById,
                  reclassified: pd.DataFrame, graphs: pd.DataFrame, pictures: Pictures,
                  maps_of: MapsOf, concepts: pd.DataFrame | None = None) -> list[GalleryItem]:
    """``count`` images drawn with ``seed`` (the same on every rerun): each with every method's
    maps, its crop box and the classes before and after; a concept method's maps are the
    image's concepts, titled with their contributions (``concepts``: the run's table)."""
    base = baseline(reclassified)
    crop_rows = reclassified[reclassified["variant"] == "crop"].set_index(["image_id", "method"])
    rng = np.random.default_rng(seed)
    ids = sorted(base.index)
    chosen = sorted(rng.choice(len(ids), size=min(count, len(ids)), replace=False)) if ids else []
    gallery = []
    for k in chosen:
        image_id = ids[k]
        i, row = rows_by_id[image_id]
        try:
            thumb, frame = pictures(row, GALLERY_SIDE)
        except Exception as exc:  # noqa: BLE001 - a picture that vanished since: leave it out
            log.warning("report: %s left out of the gallery: %s", image_id, exc)
            continue
        parts = row.get("parts")
        if parts is not None and len(parts):
            s, ox, oy = frame
            thumb = draw_parts(thumb, [(p["name"], p["x"] * s - ox, p["y"] * s - oy)
                                       for p in parts])
        b = base.loc[image_id]
        caption = [f"label: {row.get('label_name') or '–'}",
                   f"global: {b['top1_name']} ({b['top1_prob']:.2f})"]
        per_method = {}
        own = concepts[concepts["image_id"] == image_id] if concepts is not None else None
        for method in methods:
            box = None
            if (image_id, method) in crop_rows.index:
                rec = crop_rows.loc[(image_id, method)]
                box = box_in(frame, rec)
                caption.append(f"{method} crop: {rec['top1_name']} ({rec['top1_prob']:.2f})")
            maps = maps_of(method, i)
            per_method[method] = (concept_maps(maps, own, method)
                                  if own is not None and method in set(own["method"])
                                  else MethodMaps(maps))
            per_method[method].box = box
        gallery.append(GalleryItem(image_id, thumb, caption, per_method,
                                   graph_roots(graphs[graphs["image_id"] == image_id])))
    return gallery


def concept_items(concepts: pd.DataFrame, class_names: Sequence[str], rows_by_id: RowsById,
                  pictures: Pictures, maps_of: MapsOf, classes: int = 12) -> list[ConceptItem]:
    """Per class (the ``classes`` most explained), method and concept: the mean contribution,
    its share of the class's summed positive contributions, and the image where the concept
    contributes most, drawn with the concept's map."""
    items: list[ConceptItem] = []
    if concepts.empty:
        return items
    busiest = concepts.groupby("target")["image_id"].nunique().sort_values(ascending=False)
    for target in sorted(busiest.index[:classes]):
        cell = concepts[concepts["target"] == target]
        for method, own in cell.groupby("method", sort=True):
            means = own.groupby("concept")["contribution"].mean()
            positive = means.clip(lower=0).sum()
            for concept, mean in means.items():
                rows = own[own["concept"] == concept]
                best = rows.loc[rows["contribution"].idxmax()]
                i, row = rows_by_id[str(best["image_id"])]
                try:
                    thumb, _ = pictures(row, FLIP_SIDE)
                except Exception as exc:  # noqa: BLE001 - a picture that vanished since
                    log.warning("report: %s left out of the concepts: %s", best["image_id"], exc)
                    continue
                picture = overlay(thumb, maps_of(str(method), i)[f"c{int(concept)}"])
                items.append(ConceptItem(
                    str(class_names[int(target)]) if int(target) < len(class_names)
                    else str(target), str(method), int(concept), float(mean),
                    float(max(mean, 0) / positive) if positive > 0 else 0.0, len(rows),
                    str(best["image_id"]), picture))
    return items


def flip_items(per_group: int, rows_by_id: RowsById, reclassified: pd.DataFrame,
               pictures: Pictures) -> list[FlipItem]:
    """Per (method, variant) the first ``per_group`` images the variant turned from wrong to
    right and from right to wrong (labelled runs), or whose top-1 it changed (unlabelled)."""
    base = baseline(reclassified)
    flips = []
    labelled = base["correct"].notna().any() if len(base) else False
    others = reclassified[reclassified["method"] != BASELINE_METHOD]
    for (method, variant), cell in others.groupby(["method", "variant"], sort=True):
        cell = cell.merge(base[["top1", "top1_name", "correct"]], left_on="image_id",
                          right_index=True, suffixes=("", "_base")).set_index("image_id")
        cell = cell.sort_index()
        if labelled:
            now = cell["correct"].astype("boolean")
            before = cell["correct_base"].astype("boolean")
            groups = {"wrong→right": cell[(~before & now).fillna(False).to_numpy(bool)],
                      "right→wrong": cell[(before & ~now).fillna(False).to_numpy(bool)]}
        else:
            groups = {"changed": cell[cell["top1"] != cell["top1_base"]]}
        for direction, members in groups.items():
            for image_id, rec in members.head(per_group).iterrows():
                _, row = rows_by_id[image_id]
                try:
                    thumb, frame = pictures(row, FLIP_SIDE)
                except Exception as exc:  # noqa: BLE001 - a picture that vanished since
                    log.warning("report: %s left out of the flips: %s", image_id, exc)
                    continue
                caption = ([f"label {row.get('label_name') or rec.get('model_label')}"]
                           if labelled else [])
                caption += [f"{rec['top1_name_base']} → {rec['top1_name']}"]
                flips.append(FlipItem(str(image_id), str(method), str(variant), direction, thumb,
                                      caption, box_in(frame, rec)))
    return flips


def report_meta(config: RunConfig, analysis: AnalysisConfig, root: str,
                info: dict) -> dict[str, str]:
    """The report's header: what was run, with which settings, by which code (``info``: the
    run's run.json)."""
    return {
        "run folder": root,
        "model": str(info.get("model", {}).get("name", config.model)),
        "methods": ", ".join(name if spec.kind == name else f"{name} ({spec.kind})"
                             for name, spec in config.methods.items()),
        "target": config.target,
        "variants": ", ".join(analysis.reclassify.variants),
        "created": str(info.get("created", "")),
        "code version": str(info.get("code_version", "")),
        "deletion/insertion": f"{analysis.evaluate.steps} steps, baseline "
                              f"{analysis.evaluate.baseline}",
        "confidence intervals": f"{analysis.bootstrap.confidence:.0%} percentile bootstrap, "
                                f"{analysis.bootstrap.resamples} resamples, seed "
                                f"{analysis.bootstrap.seed}",
    }
