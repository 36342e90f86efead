"""The end of a run: ``summary.parquet`` and the self-contained ``report.html`` from every part
of the run folder."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from fidoflow.pipeline.analysis.aggregate import build_summary, timings_of
from fidoflow.pipeline.analysis.report import render_report
from fidoflow.pipeline.analysis.report_items import (
    concept_items,
    flip_items,
    frame_items,
    gallery_items,
    mean_curves,
    picture_frame,
    report_meta,
)
from fidoflow.pipeline.config import DEFAULT_ANALYSIS, AnalysisConfig, RunConfig
from fidoflow.storage import masks, parts, runrecord, tables
from fidoflow.storage.runfolder import RunFolder
from fidoflow.storage.shards import mask_rows

from .increment import removed_ids
from .layout import metrics_table
from .worker import model_of


def aggregate_run(config: RunConfig, analysis: AnalysisConfig = DEFAULT_ANALYSIS
                  ) -> dict[str, object]:
    """``summary.parquet`` and ``report.html`` from every part of the run; returns their URLs
    and the number of summary rows (for the caller's artifacts)."""
    run = RunFolder(config.root)
    manifest_table = run.read_table(tables.MANIFEST.path)
    gone = removed_ids(run)  # their rows stay in the folder; the summary is of the archive now
    manifest_table = manifest_table.append_column("mask_row", pa.array(
        mask_rows(manifest_table["shard"].to_numpy(), config.shard_size)))
    if gone:
        manifest_table = manifest_table.filter(pc.invert(pc.is_in(
            manifest_table["image_id"], pa.array(sorted(gone), pa.string()))))

    def present(table: tables.Table) -> pd.DataFrame:
        frame = (parts.read_errors(run) if table is tables.ERRORS
                 else parts.read_parts(run, table)).to_pandas()
        return frame[~frame["image_id"].isin(gone)] if gone else frame

    manifest = manifest_table.drop_columns(["mask_row"]).to_pandas()
    predictions, reclassified = present(tables.PREDICTIONS), present(tables.RECLASSIFY)
    metrics, errors, located = present(metrics_table()), present(tables.ERRORS), present(
        tables.PARTS)
    summary = build_summary(manifest, reclassified, metrics, errors,
                            timings_of(predictions, reclassified, metrics), analysis.bootstrap,
                            located)
    run.write_table(pa.Table.from_pandas(summary, schema=tables.SUMMARY.schema,
                                         preserve_index=False), tables.SUMMARY.path)
    html = build_report(config, analysis, run, manifest_table.to_pylist(), reclassified,
                        metrics, summary, len(gone))
    run.write_bytes_atomic(html.encode("utf-8"), "report.html")
    return {"summary": run.url(tables.SUMMARY.path), "report": run.url("report.html"),
            "rows": len(summary)}


def build_report(config: RunConfig, analysis: AnalysisConfig, run: RunFolder,
                 manifest: list[dict], reclassified, metrics, summary, removed: int = 0) -> str:
    """The report's HTML (self-contained): pictures from the archive, maps from the store.
    ``manifest``: its rows as Arrow gives them (None where a value is missing), each with
    its ``mask_row``."""
    model = model_of(config)
    rows_by_id = {r["image_id"]: (r.pop("mask_row"), r) for r in manifest}
    names = {method: masks.map_names(run.masks_url, method) for method in config.methods}

    def pictures(row: dict, longest: int):
        return picture_frame(config.archive_root / str(row["path"]), row, config.decode_limits,
                             model.input_size, model.resize, longest)

    def whole(row: dict, longest: int):
        frame = {k: v for k, v in row.items() if not k.startswith("crop_")}
        thumb, (scale, _, _) = picture_frame(config.archive_root / str(row["path"]), frame,
                                             config.decode_limits, model.input_size, "squash",
                                             longest)
        return thumb, scale

    crop_boxes = masks.read_crops(run.masks_url)

    def maps_of(method: str, i: int) -> dict:
        return {name: masks.read_maps(run.masks_url, method, name, slice(i, i + 1))[0]
                for name in names[method]}

    graphs = parts.read_parts(run, tables.SAG).to_pandas()
    concepts = parts.read_parts(run, tables.CONCEPTS).to_pandas()
    gallery = gallery_items(list(config.methods), analysis.gallery, analysis.bootstrap.seed,
                            rows_by_id, reclassified, graphs, pictures, maps_of, concepts)
    flips = flip_items(analysis.flips, rows_by_id, reclassified, pictures)
    frames = frame_items(rows_by_id, next(iter(config.methods)), analysis.gallery, whole,
                         lambda i: crop_boxes[i], maps_of)
    note = (f"At most {analysis.flips} examples per method, variant and direction "
            "(first image ids); the counts are in the table above.")
    info = run.read_json(runrecord.RECORD) if run.exists(runrecord.RECORD) else {}
    return render_report(summary, mean_curves(metrics) if len(metrics) else {}, gallery, flips,
                         title=f"fidoflow report: {Path(run.root).name}",
                         meta=report_meta(config, analysis, run.root, info), flips_note=note,
                         frames=frames, concepts=concept_items(concepts, model.class_names,
                                                               rows_by_id, pictures, maps_of),
                         removed=removed)
