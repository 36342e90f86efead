"""The analysis stages of a run as plain functions: re-classify and evaluate one shard, aggregate
the run into ``summary.parquet`` and ``report.html``. Pipeline + storage wired together, no
Prefect inside: the tasks of ``explain_archive.py`` call these; so can a notebook or a test.

Each shard's ``reclassify/`` or ``metrics/`` part is written last and atomically, after the
stage's own error part (``errors/reclassify-part-XXXXX.parquet``,
``errors/evaluate-part-XXXXX.parquet``); a rerun skips shards whose part exists.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from pipeline import images as imaging
from pipeline.aggregate import BASELINE_METHOD, BASELINE_VARIANT, BootstrapConfig, build_summary
from pipeline.evaluate import EvaluateConfig, boxes_to_input, evaluate_masks
from pipeline.reclassify import BASELINE, ReclassifyConfig, reclassify, softmax, top_k
from pipeline.report import Curves, FlipItem, GalleryItem, MethodMaps, render_report, thumbnail
from storage import masks, parts, schemas
from storage.runfolder import RunFolder

from . import stages
from .config import RunConfig

log = logging.getLogger(__name__)
STAGE_PARTS = {"reclassify": "reclassify", "evaluate": "metrics"}
ERROR_PREFIXES = {"reclassify": "reclassify-part", "evaluate": "evaluate-part"}
BOX_COLUMNS = ("box_x0", "box_y0", "box_x1", "box_y1")


@dataclass(frozen=True)
class AnalysisConfig:
    """Settings of the analysis stages (defaults documented in docs/tables.md and the
    pipeline modules); ``gallery`` images in the report, ``flips`` examples per (method,
    variant, direction)."""

    reclassify: ReclassifyConfig = field(default_factory=ReclassifyConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)
    gallery: int = 8
    flips: int = 6

    def to_json(self) -> dict[str, object]:
        return {"reclassify": self.reclassify.as_dict(), "evaluate": self.evaluate.as_dict(),
                "bootstrap": dict(vars(self.bootstrap)), "gallery": self.gallery,
                "flips": self.flips}

    @classmethod
    def from_json(cls, record: dict | None) -> AnalysisConfig:
        if not record:
            return cls()
        return cls(ReclassifyConfig.from_dict(record.get("reclassify", {})),
                   EvaluateConfig(**record.get("evaluate", {})),
                   BootstrapConfig(**record.get("bootstrap", {})),
                   record.get("gallery", 8), record.get("flips", 6))


DEFAULT_ANALYSIS = AnalysisConfig()  # what a run uses unless told otherwise


# --- what the explain side provides, whichever version of it is installed --------------------

def model_of(config: RunConfig):
    """The run's model, loaded once per process."""
    if hasattr(stages, "model_of"):
        return stages.model_of(config)
    return stages.worker_model(config.model)


def archive_root(config: RunConfig) -> Path:
    return Path(getattr(config, "archive_root", None) or config.source)


def decode(config: RunConfig, row: dict, min_side: int | None = None):
    """The picture of a manifest row, as the explain stage decodes it (limits, EXIF, ...);
    decoders that can shrink (JPEG DCT scaling) keep both sides at least ``min_side``."""
    params = inspect.signature(imaging.decode_image).parameters
    kwargs: dict[str, object] = {}
    if "limits" in params and hasattr(config, "decode_limits"):
        kwargs["limits"] = config.decode_limits
    if "min_size" in params and min_side:
        kwargs["min_size"] = (min_side, min_side)
    return imaging.decode_image(archive_root(config) / str(row["path"]), **kwargs)


def device_of(config: RunConfig) -> torch.device:
    """The run's device (``auto``: the GPU when there is one)."""
    try:
        from pipeline.device import resolve_device
    except ImportError:
        return torch.device(config.device)
    return resolve_device(config.device)


def resize_mode(model) -> str:
    return getattr(model, "resize", "squash")


def model_input(img, size: tuple[int, int], mode: str) -> torch.Tensor:
    if mode != "squash" and "mode" in inspect.signature(imaging.to_tensor).parameters:
        return imaging.to_tensor(img, size, mode)
    return imaging.to_tensor(img, size)


def view_box(picture_size: tuple[int, int], input_size: tuple[int, int], mode: str
             ) -> tuple[float, float, float, float]:
    """The part (x0, y0, x1, y1) of a picture (width, height) that the model sees."""
    if mode == "crop" and hasattr(imaging, "crop_box"):
        return tuple(float(v) for v in imaging.crop_box(picture_size, input_size))
    return 0.0, 0.0, float(picture_size[0]), float(picture_size[1])


def original_size(img, row: dict) -> tuple[int, int]:
    """(width, height) of the original picture: what the decoder says it was before shrinking,
    else the manifest's, else the decoded size."""
    size = getattr(img, "info", {}).get("original_size")
    if size:
        return int(size[0]), int(size[1])
    if row.get("width") and row.get("height"):
        return int(row["width"]), int(row["height"])
    return img.size


def pending(config: RunConfig, stage: str, n_shards: int) -> list[int]:
    """Shards of ``stage`` ("reclassify" or "evaluate") without their part."""
    done = parts.done_shards(RunFolder(config.root), STAGE_PARTS[stage])
    return [s for s in range(n_shards) if s not in done]


def _explained(run: RunFolder, shard: int) -> pd.DataFrame:
    """The shard's predictions (one row per image and method that explain produced)."""
    if shard not in parts.done_shards(run, "predictions"):
        return schemas.PREDICTIONS.empty_table().to_pandas()
    return run.read_table("predictions", parts.part_name(shard)).to_pandas()


def _error(row: dict, stage: str, exc: BaseException) -> dict[str, object]:
    return {"image_id": row["image_id"], "path": row["path"], "stage": stage,
            "error_type": type(exc).__name__, "message": str(exc)}


def _int_or_none(value: object) -> int | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return int(value)


# --- re-classification -------------------------------------------------------------------

def _label_fields(row: dict, top: list[int]) -> dict[str, object]:
    model_label = _int_or_none(row.get("model_label"))
    return {"label": _int_or_none(row.get("label")), "label_name": row.get("label_name"),
            "model_label": model_label,
            "correct": None if model_label is None else top[0] == model_label,
            "correct_top5": None if model_label is None else model_label in top}


def reclassify_shard(config: RunConfig, shard: int,
                     analysis: AnalysisConfig = AnalysisConfig()) -> dict[str, int]:
    """Re-classify every explained image of the shard with each method's joint map; the
    ``reclassify/`` part, written last, marks the shard done."""
    rcfg = analysis.reclassify
    run = RunFolder(config.root)
    start, rows = stages.shard_rows(run, config, shard)
    explained = set(_explained(run, shard)["image_id"])
    model = model_of(config)
    device = device_of(config)
    module = model.on(device)
    size = tuple(model.input_size)
    mode = resize_mode(model)
    work_side = rcfg.decode_min_side(size)
    methods = list(config.methods)
    joint = {m: masks.read_maps(run.masks_url, m, "joint", slice(start, start + len(rows)))
             for m in methods}
    records: list[dict[str, object]] = []
    errors: list[dict[str, object]] = []
    todo = [(i, row) for i, row in enumerate(rows) if row["image_id"] in explained]
    step = max(1, config.batch_size)
    for b in range(0, len(todo), step):
        began = time.perf_counter()
        batch, inputs, pictures, views, scales = [], [], [], [], []
        for i, row in todo[b:b + step]:
            try:
                img = decode(config, row, work_side)
                width, height = original_size(img, row)
                work = shrink_to_side(img, work_side)
                inputs.append(model_input(img, size, mode))
                pictures.append(imaging.to_tensor(work, (work.size[1], work.size[0])))
                views.append(view_box(work.size, size, mode))
                scales.append((width / work.size[0], height / work.size[1]))
                batch.append((i, row))
            except Exception as exc:  # noqa: BLE001 - one bad file must never stop a shard
                errors.append(_error(row, "reclassify", exc))
        if not batch:
            continue
        x = torch.stack(inputs).to(device)
        global_probs = softmax(module, x, rcfg.batch_size)
        batch_records = [_record(row, BASELINE_METHOD, BASELINE_VARIANT, global_probs[j], model,
                                 rcfg.topk, None) for j, (_, row) in enumerate(batch)]
        for method in methods:
            sal = torch.from_numpy(np.stack([joint[method][i] for i, _ in batch]).astype(np.float32))
            out = reclassify(module, x, sal, pictures, views, rcfg, global_probs)
            for variant, probs in out.probs.items():
                if variant == BASELINE:
                    continue
                for j, (_, row) in enumerate(batch):
                    box = None
                    if variant != "blend" and out.boxes is not None:
                        sx, sy = scales[j]
                        x0, y0, x1, y1 = out.boxes[j].tolist()
                        box = (round(x0 * sx), round(y0 * sy), round(x1 * sx), round(y1 * sy))
                    batch_records.append(_record(row, method, variant, probs[j], model,
                                                 rcfg.topk, box))
        seconds = (time.perf_counter() - began) / len(batch_records)
        for record in batch_records:
            record["seconds"] = seconds
        records.extend(batch_records)
    parts.write_part(run, "errors", shard, pa.Table.from_pylist(errors, schemas.ERRORS),
                     schemas.ERRORS, prefix=ERROR_PREFIXES["reclassify"])
    parts.write_part(run, "reclassify", shard,
                     pa.Table.from_pylist(records, schemas.RECLASSIFY), schemas.RECLASSIFY)
    return {"shard": shard, "images": len(todo) - len(errors), "errors": len(errors)}


def shrink_to_side(img, side: int):
    """The picture with its shorter side at most ``side`` (aspect kept; never enlarged): the
    resolution at which even the smallest crop keeps the model input's pixels."""
    from PIL import Image

    w, h = img.size
    if min(w, h) <= side:
        return img
    scale = side / min(w, h)
    return img.resize((max(1, round(w * scale)), max(1, round(h * scale))),
                      Image.Resampling.BILINEAR, reducing_gap=2.0)


def _record(row: dict, method: str, variant: str, probs: torch.Tensor, model, k: int,
            box: tuple[int, int, int, int] | None) -> dict[str, object]:
    idx, p = top_k(probs[None], k)
    top = idx[0].tolist()
    record = {"image_id": row["image_id"], "method": method, "variant": variant,
              "top1": top[0], "top1_name": model.class_names[top[0]],
              "top1_prob": float(p[0, 0]), "top5": top, "top5_prob": p[0].tolist(),
              **_label_fields(row, top)}
    for name, value in zip(("crop_x0", "crop_y0", "crop_x1", "crop_y1"), box or (None,) * 4,
                           strict=True):
        record[name] = value
    return record


# --- evaluation ---------------------------------------------------------------------------

def _boxes(rows: Sequence[dict]) -> np.ndarray:
    """(N, 4) ground-truth boxes in original pixels; NaN rows where there is none."""
    out = np.full((len(rows), 4), np.nan)
    for i, row in enumerate(rows):
        values = [row.get(c) for c in BOX_COLUMNS]
        if all(v is not None for v in values):
            out[i] = values
    return out


def evaluate_shard(config: RunConfig, shard: int,
                   analysis: AnalysisConfig = AnalysisConfig()) -> dict[str, int]:
    """Mask metrics of every explained image and method of the shard; the ``metrics/`` part,
    written last, marks the shard done."""
    ecfg = analysis.evaluate
    run = RunFolder(config.root)
    start, rows = stages.shard_rows(run, config, shard)
    predictions = _explained(run, shard)
    targets = {(r.image_id, r.method): int(r.target) for r in predictions.itertuples()}
    model = model_of(config)
    device = device_of(config)
    module = model.on(device)
    size = tuple(model.input_size)
    mode = resize_mode(model)
    explained = set(predictions["image_id"])
    joint = {m: masks.read_maps(run.masks_url, m, "joint", slice(start, start + len(rows)))
             for m in config.methods}
    records: list[dict[str, object]] = []
    errors: list[dict[str, object]] = []
    todo = [(i, row) for i, row in enumerate(rows) if row["image_id"] in explained]
    step = max(1, config.batch_size)
    for b in range(0, len(todo), step):
        batch, inputs, views = [], [], []
        for i, row in todo[b:b + step]:
            try:
                img = decode(config, row, 2 * max(size))
                width, height = original_size(img, row)
                inputs.append(model_input(img, size, mode))
                # the view in original pixels (the decoded picture may have been shrunk)
                rx, ry = width / img.size[0], height / img.size[1]
                vx0, vy0, vx1, vy1 = view_box(img.size, size, mode)
                views.append((vx0 * rx, vy0 * ry, vx1 * rx, vy1 * ry))
                batch.append((i, row))
            except Exception as exc:  # noqa: BLE001
                errors.append(_error(row, "evaluate", exc))
        if not batch:
            continue
        x = torch.stack(inputs).to(device)
        boxes = boxes_to_input(_boxes([row for _, row in batch]), np.array(views), size)
        for method in config.methods:
            chosen = [(j, i, row) for j, (i, row) in enumerate(batch)
                      if (row["image_id"], method) in targets]
            if not chosen:
                continue
            began = time.perf_counter()
            sel = [j for j, _, _ in chosen]
            sal = torch.from_numpy(np.stack([joint[method][i] for _, i, _ in chosen])
                                   .astype(np.float32))
            tgt = torch.tensor([targets[(row["image_id"], method)] for _, _, row in chosen])
            out = evaluate_masks(module, x[sel], sal, tgt, boxes[sel], ecfg)
            seconds = (time.perf_counter() - began) / len(chosen)
            for k, (_, _, row) in enumerate(chosen):
                hit = out["pointing_hit"][k]
                records.append({
                    "image_id": row["image_id"], "method": method, "target": int(tgt[k]),
                    "deletion_auc": float(out["deletion_auc"][k]),
                    "insertion_auc": float(out["insertion_auc"][k]),
                    "deletion_curve": out["deletion_curve"][k].tolist(),
                    "insertion_curve": out["insertion_curve"][k].tolist(),
                    "pointing_hit": None if np.isnan(hit) else bool(hit),
                    **{key: None if np.isnan(out[key][k]) else float(out[key][k])
                       for key in ("share_in_box", "box_iou", "fdr")},
                    "total_variation": float(out["total_variation"][k]),
                    "seconds": seconds,
                })
    parts.write_part(run, "errors", shard, pa.Table.from_pylist(errors, schemas.ERRORS),
                     schemas.ERRORS, prefix=ERROR_PREFIXES["evaluate"])
    parts.write_part(run, "metrics", shard, pa.Table.from_pylist(records, schemas.METRICS),
                     schemas.METRICS)
    return {"shard": shard, "images": len(todo) - len(errors), "errors": len(errors)}


# --- aggregation and report ----------------------------------------------------------------

def read_errors(run: RunFolder) -> pd.DataFrame:
    """Every error part of the run (explain's and the analysis stages')."""
    prefixes = (parts.DEFAULT_PREFIX, *ERROR_PREFIXES.values())
    return parts.read_stage(run, "errors", schemas.ERRORS, prefixes).to_pandas()


def timings_of(predictions: pd.DataFrame, reclassified: pd.DataFrame,
               metrics: pd.DataFrame) -> pd.DataFrame:
    frames = [
        predictions.assign(stage="explain")[["stage", "method", "image_id", "seconds"]],
        reclassified.assign(stage="reclassify", method=None)[["stage", "method", "image_id",
                                                              "seconds"]],
        metrics.assign(stage="evaluate")[["stage", "method", "image_id", "seconds"]],
    ]
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=["stage", "method", "image_id", "seconds"])
    return pd.concat(frames, ignore_index=True)


def aggregate_run(config: RunConfig, analysis: AnalysisConfig = AnalysisConfig()
                  ) -> dict[str, object]:
    """``summary.parquet`` and ``report.html`` from every part of the run; returns their URLs,
    the number of summary rows and the overall top-1 rows (for the caller's artifacts)."""
    run = RunFolder(config.root)
    manifest = run.read_table("manifest.parquet").to_pandas()
    predictions = parts.read_stage(run, "predictions", schemas.PREDICTIONS).to_pandas()
    reclassified = parts.read_stage(run, "reclassify", schemas.RECLASSIFY).to_pandas()
    metrics = parts.read_stage(run, "metrics", schemas.METRICS).to_pandas()
    errors = read_errors(run)
    summary = build_summary(manifest, reclassified, metrics, errors,
                            timings_of(predictions, reclassified, metrics), analysis.bootstrap)
    run.write_table(pa.Table.from_pandas(summary, schema=schemas.SUMMARY, preserve_index=False),
                    "summary.parquet")
    html = build_report(config, analysis, run, manifest, reclassified, metrics, summary)
    run.write_bytes_atomic(html.encode("utf-8"), "report.html")
    return {"summary": run.url("summary.parquet"), "report": run.url("report.html"),
            "rows": len(summary)}


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


def _picture_frame(config: RunConfig, row: dict, model, longest: int):
    """Thumbnail of the part of a picture the model saw, and the map from original pixels to
    thumbnail pixels (scale, offset x, offset y)."""
    img = decode(config, row, longest)
    width, _ = original_size(img, row)
    vx0, vy0, vx1, vy1 = view_box(img.size, tuple(model.input_size), resize_mode(model))
    seen = img.crop((int(vx0), int(vy0), int(vx1), int(vy1))) if (vx0, vy0) != (0, 0) or (
        vx1, vy1) != img.size else img
    thumb, t = thumbnail(np.asarray(seen), longest)
    r = img.size[0] / width  # decoded pixels per original pixel
    return thumb, (r * t, vx0 * t, vy0 * t)


def _box_in(frame: tuple[float, float, float], record) -> tuple[float, ...] | None:
    values = [getattr(record, c, None) for c in ("crop_x0", "crop_y0", "crop_x1", "crop_y1")]
    if any(v is None or pd.isna(v) for v in values):
        return None
    s, ox, oy = frame
    x0, y0, x1, y1 = values
    return x0 * s - ox, y0 * s - oy, x1 * s - ox, y1 * s - oy


def build_report(config: RunConfig, analysis: AnalysisConfig, run: RunFolder,
                 manifest: pd.DataFrame, reclassified: pd.DataFrame, metrics: pd.DataFrame,
                 summary: pd.DataFrame) -> str:
    model = model_of(config)
    rows_by_id = {r["image_id"]: (i, r) for i, r in enumerate(manifest.to_dict("records"))}
    base = reclassified[(reclassified["method"] == BASELINE_METHOD)].set_index("image_id")
    methods = list(config.methods)
    crop_rows = reclassified[reclassified["variant"] == "crop"].set_index(["image_id", "method"])

    rng = np.random.default_rng(analysis.bootstrap.seed)
    ids = sorted(base.index)
    chosen = sorted(rng.choice(len(ids), size=min(analysis.gallery, len(ids)), replace=False)) \
        if ids else []
    map_names = {method: _map_names(run, method) for method in methods}
    gallery = []
    for k in chosen:
        image_id = ids[k]
        i, row = rows_by_id[image_id]
        try:
            thumb, frame = _picture_frame(config, row, model, 224)
        except Exception as exc:  # noqa: BLE001 - a picture that vanished since: leave it out
            log.warning("report: %s left out of the gallery: %s", image_id, exc)
            continue
        b = base.loc[image_id]
        caption = [f"label: {row.get('label_name') or '–'}",
                   f"global: {b['top1_name']} ({b['top1_prob']:.2f})"]
        per_method = {}
        for method in methods:
            maps = {name: masks.read_maps(run.masks_url, method, name, slice(i, i + 1))[0]
                    for name in ("ssr", "sdr", "joint")
                    if name in map_names[method]}
            box = None
            if (image_id, method) in crop_rows.index:
                rec = crop_rows.loc[(image_id, method)]
                box = _box_in(frame, rec)
                caption.append(f"{method} crop: {rec['top1_name']} ({rec['top1_prob']:.2f})")
            per_method[method] = MethodMaps(maps, box)
        gallery.append(GalleryItem(image_id, thumb, caption, per_method))

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
            for image_id, rec in members.head(analysis.flips).iterrows():
                _, row = rows_by_id[image_id]
                try:
                    thumb, frame = _picture_frame(config, row, model, 150)
                except Exception as exc:  # noqa: BLE001
                    log.warning("report: %s left out of the flips: %s", image_id, exc)
                    continue
                caption = ([f"label {row.get('label_name') or rec.get('model_label')}"]
                           if labelled else [])
                caption += [f"{rec['top1_name_base']} → {rec['top1_name']}"]
                flips.append(FlipItem(str(image_id), str(method), str(variant), direction, thumb,
                                      caption, _box_in(frame, rec)))
    info = run.read_json("run.json") if run.exists("run.json") else {}
    meta = {
        "run folder": run.root,
        "model": str(info.get("model", {}).get("name", config.model)),
        "methods": ", ".join(methods),
        "variants": ", ".join(analysis.reclassify.variants),
        "created": str(info.get("created", "")),
        "code version": str(info.get("code_version", "")),
        "deletion/insertion": f"{analysis.evaluate.steps} steps, baseline "
                              f"{analysis.evaluate.baseline}",
        "confidence intervals": f"{analysis.bootstrap.confidence:.0%} percentile bootstrap, "
                                f"{analysis.bootstrap.resamples} resamples, seed "
                                f"{analysis.bootstrap.seed}",
    }
    note = (f"At most {analysis.flips} examples per method, variant and direction "
            "(first image ids); the counts are in the table above.")
    return render_report(summary, mean_curves(metrics) if len(metrics) else {}, gallery, flips,
                         title=f"fidoflow report: {Path(run.root).name}", meta=meta,
                         flips_note=note)


def _map_names(run: RunFolder, method: str) -> tuple[str, ...]:
    import zarr

    group = zarr.open_group(run.masks_url, mode="r")[method]
    return tuple(name for name in ("ssr", "sdr", "joint") if name in group)
