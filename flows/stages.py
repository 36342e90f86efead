"""The stages of a run as plain functions: the run folder (storage/) read, the domain
(pipeline/) called, the results written back. No Prefect inside: the tasks of
``explain_archive.py`` call these; so can a notebook or a test.

Each stage writes a shard's part last (storage/tables.py declares which), so a rerun skips the
shards whose part exists and redoes the rest.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fidoflow.pipeline.analysis.aggregate import build_summary, timings_of
from fidoflow.pipeline.analysis.evaluate import evaluate_pictures
from fidoflow.pipeline.analysis.explain import explain_rows
from fidoflow.pipeline.analysis.reclassify import reclassify_pictures
from fidoflow.pipeline.analysis.records import exception_record
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
from fidoflow.pipeline.archive.prepare import changed_files, summarise_manifest
from fidoflow.pipeline.archive.stream import EmptyArchive, open_manifest
from fidoflow.pipeline.config import DEFAULT_ANALYSIS, AnalysisConfig, RunConfig
from fidoflow.pipeline.imaging.views import Picture, prepare_picture
from fidoflow.pipeline.metrics import METRICS
from fidoflow.pipeline.models.device import (
    activation_bytes,
    default_batch_size,
    free_gpu_bytes,
    resolve_device,
    step_bytes,
)
from fidoflow.pipeline.models.loading import LoadedModel, load_model
from fidoflow.pipeline.plan import (
    GPU_SPEEDUP,
    LARGEST_SHARD,
    PER_IMAGE,
    Cost,
    analysis_passes,
    auto_shard_size,
    forward_seconds,
    task_size,
)
from fidoflow.pipeline.provenance import code_version
from fidoflow.storage import masks, parts, runrecord, tables
from fidoflow.storage.runfolder import SCHEMA_VERSION, RunFolder
from fidoflow.storage.shards import ExplainedShard, Todo, read_explained, shard_rows

ROW_GROUP_ROWS = 8192  # manifest rows per row group, rounded to whole tasks
COMPACT_ROWS = 100_000  # manifest rows behind one part of a compacted run


@functools.cache
def worker_model(spec: str, card: str | None = None, trust_code: bool = False) -> LoadedModel:
    """The model, loaded once per process (each Dask worker keeps its own)."""
    return load_model(spec, card, trust_code)


def model_of(config: RunConfig) -> LoadedModel:
    """The run's model (spec, card and trust flag from the config), once per process."""
    return worker_model(config.model, config.model_card, config.trust_model_code)


def images_per_step(config: RunConfig) -> int:
    """Images per optimisation step: the run's ``batch_size``, else what the worker's device
    holds (pipeline/models/device.py: 1 on a CPU; on a GPU as many as fill its free memory at
    the run's blends per image)."""
    if config.batch_size:
        return config.batch_size
    return _step_for(config.model, config.model_card, config.trust_model_code, config.device,
                     max(2 * getattr(s.config, "samples", 0) or 1
                         for s in config.methods.values()))


@functools.cache
def _step_for(model: str, card: str | None, trust: bool, device: str, blends: int) -> int:
    where = resolve_device(device)
    if where.type != "cuda":
        return default_batch_size(where)
    loaded = worker_model(model, card, trust)
    per_image = step_bytes(activation_bytes(loaded.module, loaded.input_size), blends, True)
    return default_batch_size(where, free_gpu_bytes(where), per_image)


def set_worker_threads(workers: int) -> None:
    """Share the machine's cores between worker processes instead of oversubscribing them."""
    import torch
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(workers, 1)))


@functools.cache
def metrics_table() -> tables.Table:
    """The ``metrics`` table with every registered metric's columns (docs: the metric's
    description, its score direction, and when it is null)."""
    def doc(column, metric) -> str:
        better = f" ({column.better} is better)" if column.better else ""
        null = "; null without a box" if "boxes" in metric.needs else ""
        return f"{column.description}{better}{null}"

    return tables.METRICS.with_columns(tuple(
        tables.Column(c.name, c.type, doc(c, m)) for m in METRICS for c in m.columns))


# ---- prepare --------------------------------------------------------------------------------

def plan_run(config: RunConfig, model: LoadedModel, images: int,
             analysis: AnalysisConfig | None) -> RunConfig:
    """The config with its shard and task sizes resolved (those given are kept, a task size
    rounded up to whole shards): pipeline/plan.py's rules, from the methods' cost and one
    forward pass timed here."""
    gpu = config.device.startswith("cuda") or (config.device == "auto" and visible_gpu())
    shard = config.shard_size or auto_shard_size(images, config.workers,
                                                 LARGEST_SHARD["cuda" if gpu else "cpu"])
    if config.task_size is not None:
        return replace(config, shard_size=shard, task_size=-(-config.task_size // shard) * shard)
    methods = list(config.methods.values())
    cost = Cost(sum(spec.passes for spec in methods),
                analysis_passes(len(methods), analysis.evaluate.steps)
                if config.analyse and analysis is not None else 0.0)
    seconds = forward_seconds(model.on(resolve_device("cpu")), model.input_size)
    per_image = cost.passes * seconds / (GPU_SPEEDUP if gpu else 1.0) + PER_IMAGE
    return replace(config, shard_size=shard,
                   task_size=task_size(images, config.workers, shard, per_image))


def visible_gpu() -> bool:
    import torch
    return torch.cuda.is_available()


def write_manifest(run: RunFolder, config: RunConfig, model: LoadedModel,
                   analysis: AnalysisConfig | None = None) -> tuple[RunConfig, dict]:
    """Stream the archive's rows into manifest.parquet (row groups of whole shards); returns
    the config with its shard and task sizes resolved, and what run.json records of the
    archive: the label report (``labels``) and the items that made no row (``archive``, e.g.
    empty camera-trap frames). Nothing is written when the archive itself is refused."""
    stream = open_manifest(config.source, config.format, config.split, config.images_root,
                           model.class_names, config.label_map,
                           {"detection_threshold": config.detection_threshold,
                            "detection_categories": config.detection_categories}, config.crop)
    try:
        if stream.rows == 0:
            where = "" if config.split == "all" else f" in the {config.split} split"
            raise EmptyArchive(f"{config.source} holds no images{where} (folders are searched "
                               "recursively for image files); nothing to do")
        config = plan_run(config, model, stream.rows, analysis)
        group = max(1, ROW_GROUP_ROWS // config.task_size) * config.task_size
        run.makedirs()
        run.write_batches(stream.batches(config.shard_size, group), tables.MANIFEST.schema,
                          tables.MANIFEST.path, row_group_size=group)
        return config, {"labels": stream.mapper.report(), "archive": stream.counts}
    finally:
        stream.close()


def prepare_run(config: RunConfig, analysis: AnalysisConfig | None = None
                ) -> tuple[RunConfig, int]:
    """Create or reopen the run folder: manifest.parquet, run.json, masks.zarr. Returns the
    config with its shard and task sizes resolved (chosen now, or those the folder was made
    with) and the number of shards; ``analysis`` (when the run analyses) counts in the tasks'
    cost.

    The manifest is streamed before run.json is written: a source or option the readers refuse
    leaves no run behind (a rerun without run.json starts afresh).
    """
    run = RunFolder(config.root)
    model = model_of(config)
    record = runrecord.recorded(run)
    if record is not None:
        recorded = record["config"]
        if config.shard_size is None:  # automatic: whatever the first run chose
            config = replace(config, shard_size=recorded.get("shard_size"))
        if config.task_size is None:
            config = replace(config, task_size=recorded.get("task_size"))
        runrecord.check_same(run, record, config.results_identity())
        if not run.exists(tables.MANIFEST.path):
            config, _ = write_manifest(run, config, model, analysis)
    else:
        config, found = write_manifest(run, config, model, analysis)
        run.write_json({
            "schema_version": SCHEMA_VERSION, "config": config.results_identity(),
            "model": model.describe(), **found, "code_version": code_version(),
            "seed": config.seed, "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }, runrecord.RECORD)
    rows = run.row_count(tables.MANIFEST.path)

    def image_ids() -> Iterable[list[str]]:
        with run.fs.open(run.local(tables.MANIFEST.path), "rb") as fh:
            for batch in pq.ParquetFile(fh).iter_batches(8192, columns=["image_id"]):
                yield batch.column(0).to_pylist()

    masks.create_store(
        run.masks_url, rows, config.shard_size, config.task_size, config.mask_size,
        {name: {**spec.to_json(), "maps": spec.map_names} for name, spec in config.methods.items()},
        image_ids)
    return config, -(-rows // config.shard_size)


def changed_shards(config: RunConfig) -> set[int]:
    """Shards explained before whose files changed since (size or modification time), or
    whose missing files exist now: a rerun redoes them."""
    run = RunFolder(config.root)
    images = parts.read_parts(run, tables.IMAGES).select(["image_id", "path", "bytes",
                                                          "mtime_ns"]).to_pylist()
    errors = parts.read_errors(run).to_pylist()
    missing = [e for e in errors if e["error_type"] == "MissingFile"]
    changed = changed_files(config.archive_root, images, missing)
    if not changed:
        return set()
    manifest = run.read_table(tables.MANIFEST.path, columns=["image_id", "shard"])
    ids, shards = manifest.column("image_id").to_pylist(), manifest.column("shard").to_pylist()
    return {s for i, s in zip(ids, shards, strict=True) if i in changed}


def record_analysis(config: RunConfig, analysis: dict) -> None:
    """The analysis settings into run.json (refused when a first run recorded others)."""
    runrecord.record_analysis(RunFolder(config.root), analysis)


def manifest_rows(config: RunConfig) -> int:
    """The run's images (manifest rows)."""
    return RunFolder(config.root).row_count(tables.MANIFEST.path)


def pending(config: RunConfig, stage: str, n_shards: int) -> list[int]:
    """Shards of ``stage`` (explain, reclassify, evaluate) still to do."""
    return parts.pending(RunFolder(config.root), stage, n_shards)


def manifest_report(config: RunConfig) -> dict[str, object]:
    """Refused rows and labels of the run's manifest, for the CLI's closing lines."""
    run = RunFolder(config.root)
    frame = run.read_table(tables.MANIFEST.path).select(
        ["label_name", "model_label", "manifest_error"]).to_pandas()
    return summarise_manifest(frame, run.read_json(runrecord.RECORD).get("labels", {}))


# ---- explain --------------------------------------------------------------------------------

def explain_shard(config: RunConfig, shard: int, rows: list[dict] | None = None
                  ) -> dict[str, float]:
    """Masks and predictions of one shard (``rows``: its manifest rows, when the caller read
    them already); the predictions part, written last, marks it done. ``seconds`` is the
    shard's whole time on its worker (decode, explain, write)."""
    began, started = time.perf_counter(), time.time()
    run = RunFolder(config.root)
    start = shard * config.shard_size
    if rows is None:
        _, rows = shard_rows(run, shard, config.shard_size)
    result = explain_rows(model_of(config), config.archive_root, rows, config.methods,
                          config.seed, images_per_step(config), config.device,
                          config.decode_limits, config.compile, config.mask_size, config.target)
    for method, maps in result.maps.items():
        masks.write_region(run.masks_url, method, start, maps)
    if any(region is not None for _, region in result.crops):
        boxes = np.full((len(rows), 4), np.nan, np.float32)
        for i, region in result.crops:
            if region is not None:
                boxes[i] = region
        masks.write_crops(run.masks_url, start, boxes)
    for table, extra in result.rows.items():  # the methods' own tables (sag/, concepts/)
        parts.write_part(run, tables.BY_NAME[table], shard, extra)
    if result.images:
        parts.write_part(run, tables.IMAGES, shard, result.images)
    parts.finish_shard(run, "explain", shard, result.predictions, result.errors)
    return {"shard": shard, "images": len(rows), "errors": len(result.errors),
            "seconds": time.perf_counter() - began, "started": started}


# ---- re-classify and evaluate ----------------------------------------------------------------

def _batches(todo: Todo, size: int) -> Iterator[Todo]:
    for b in range(0, len(todo), size):
        yield todo[b:b + size]


def _pictures(config: RunConfig, model: LoadedModel, chunk: Todo, stage: str, min_side: int,
              errors: list[dict], work_side: int | None = None) -> list[Picture]:
    """The chunk's pictures; a file that fails is an error row of ``stage``, never fatal."""
    out = []
    for index, row in chunk:
        try:
            out.append(prepare_picture(index, row, config.archive_root / str(row["path"]),
                                       config.decode_limits, model.input_size, model.resize,
                                       min_side, work_side))
        except Exception as exc:  # noqa: BLE001 - one bad file must never stop a shard
            errors.append(exception_record(row, stage, exc))
    return out


def _explained(config: RunConfig, shard: int, rows: list[dict] | None
               ) -> tuple[RunFolder, ExplainedShard]:
    run = RunFolder(config.root)
    return run, read_explained(run, shard, config.shard_size, list(config.methods), rows)


def reclassify_shard(config: RunConfig, shard: int,
                     analysis: AnalysisConfig = DEFAULT_ANALYSIS,
                     rows: list[dict] | None = None) -> dict[str, int]:
    """Re-classify every explained image of the shard with each method's joint map; the
    ``reclassify/`` part, written last, marks the shard done."""
    rcfg = analysis.reclassify
    run, explained = _explained(config, shard, rows)
    model = model_of(config)
    device = resolve_device(config.device)
    module = model.on(device)
    work_side = rcfg.decode_min_side(model.input_size)
    todo = explained.todo()
    records: list[dict] = []
    errors: list[dict] = []
    for chunk in _batches(todo, images_per_step(config)):
        began = time.perf_counter()
        batch = _pictures(config, model, chunk, "reclassify", work_side, errors, work_side)
        if not batch:
            continue
        rows = reclassify_pictures(module, device, model.class_names, rcfg, batch,
                                   explained.joint)
        seconds = (time.perf_counter() - began) / len(rows)
        records += [{**row, "seconds": seconds} for row in rows]
    parts.finish_shard(run, "reclassify", shard, records, errors)
    return {"shard": shard, "images": len(todo) - len(errors), "errors": len(errors)}


def evaluate_shard(config: RunConfig, shard: int,
                   analysis: AnalysisConfig = DEFAULT_ANALYSIS,
                   rows: list[dict] | None = None) -> dict[str, int]:
    """Every registered metric of every explained image and method of the shard; the
    ``metrics/`` part, written last, marks the shard done."""
    run, explained = _explained(config, shard, rows)
    targets = explained.targets()
    model = model_of(config)
    device = resolve_device(config.device)
    module = model.on(device)
    todo = explained.todo()
    records: list[dict] = []
    errors: list[dict] = []
    details: dict[str, list[dict]] = {}
    for chunk in _batches(todo, images_per_step(config)):
        batch = _pictures(config, model, chunk, "evaluate", 2 * max(model.input_size), errors)
        if batch:
            measured, more = evaluate_pictures(module, device, batch, explained.joint, targets,
                                               model.input_size, analysis.evaluate)
            records += measured
            for table, extra in more.items():
                details.setdefault(table, []).extend(extra)
    for table, extra in details.items():  # the metrics' own tables (parts/) first
        if extra:
            parts.write_part(run, tables.BY_NAME[table], shard, extra)
    parts.finish_shard(run, "evaluate", shard, records, errors, metrics_table())
    return {"shard": shard, "images": len(todo) - len(errors), "errors": len(errors)}


# ---- aggregate and report -------------------------------------------------------------------

def aggregate_run(config: RunConfig, analysis: AnalysisConfig = DEFAULT_ANALYSIS
                  ) -> dict[str, object]:
    """``summary.parquet`` and ``report.html`` from every part of the run; returns their URLs
    and the number of summary rows (for the caller's artifacts)."""
    run = RunFolder(config.root)
    manifest_table = run.read_table(tables.MANIFEST.path)
    manifest = manifest_table.to_pandas()
    predictions = parts.read_parts(run, tables.PREDICTIONS).to_pandas()
    reclassified = parts.read_parts(run, tables.RECLASSIFY).to_pandas()
    metrics = parts.read_parts(run, metrics_table()).to_pandas()
    errors = parts.read_errors(run).to_pandas()
    located = parts.read_parts(run, tables.PARTS).to_pandas()
    summary = build_summary(manifest, reclassified, metrics, errors,
                            timings_of(predictions, reclassified, metrics), analysis.bootstrap,
                            located)
    run.write_table(pa.Table.from_pandas(summary, schema=tables.SUMMARY.schema,
                                         preserve_index=False), tables.SUMMARY.path)
    html = build_report(config, analysis, run, manifest_table.to_pylist(), reclassified,
                        metrics, summary)
    run.write_bytes_atomic(html.encode("utf-8"), "report.html")
    return {"summary": run.url(tables.SUMMARY.path), "report": run.url("report.html"),
            "rows": len(summary)}


def run_in_process(config: RunConfig, analysis: AnalysisConfig = DEFAULT_ANALYSIS) -> RunFolder:
    """Every stage of every shard of ``config`` as one task in this process (``run_task``), then
    the aggregate: a run without Prefect or Dask (tests, benchmarks, a notebook)."""
    config, n_shards = prepare_run(config, analysis)
    record_analysis(config, analysis.to_json())
    shards = list(range(n_shards))
    run_task(config, analysis, shards, dict.fromkeys(("explain", "reclassify", "evaluate"),
                                                     shards))
    aggregate_run(config, analysis)
    return RunFolder(config.root)


def build_report(config: RunConfig, analysis: AnalysisConfig, run: RunFolder,
                 manifest: list[dict], reclassified, metrics, summary) -> str:
    """The report's HTML (self-contained): pictures from the archive, maps from the store.
    ``manifest``: its rows as Arrow gives them (None where a value is missing)."""
    model = model_of(config)
    rows_by_id = {r["image_id"]: (i, r) for i, r in enumerate(manifest)}
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
                                                               rows_by_id, pictures, maps_of))


# ---- tasks ----------------------------------------------------------------------------------

def sharded_tables() -> list[tuple[tables.Table, str]]:
    """Every sharded table with each of its writers' name prefixes."""
    out = [(t, parts.DEFAULT_PREFIX) for t in (tables.IMAGES, tables.PREDICTIONS, tables.SAG,
                                               tables.CONCEPTS, tables.RECLASSIFY, metrics_table(),
                                               tables.PARTS)]
    return out + [(tables.ERRORS, prefix) for prefix in tables.ERROR_PREFIX.values()]


def run_task(config: RunConfig, analysis: AnalysisConfig, shards: list[int],
             todo: dict[str, list[int]]) -> dict[str, object]:
    """One task: the stages each of its ``shards`` still needs (``todo``: stage -> shards),
    shard by shard (each shard's parts written as it finishes: a task that dies loses only its
    unfinished shard), then the task's parts merged into one per table."""
    began, started = time.perf_counter(), time.time()
    wanted = {stage: set(shards_) for stage, shards_ in todo.items()}
    run = RunFolder(config.root)
    rows_of: dict[int, list[dict]] = {s: [] for s in shards}
    for row in run.read_table(tables.MANIFEST.path, filters=[
            ("shard", ">=", shards[0]), ("shard", "<=", shards[-1])]).to_pylist():
        rows_of[row["shard"]].append(row)  # the task's rows, read once
    out: dict[str, object] = {"first": shards[0], "last": shards[-1], "images": 0,
                              "errors": 0, "analysis_errors": 0, "started": started,
                              "seconds": {stage: 0.0 for stage in ("explain", "reclassify",
                                                                   "evaluate")}}
    for shard in shards:
        if shard in wanted.get("explain", ()):
            done = explain_shard(config, shard, rows_of[shard])
            out["images"] += done["images"]
            out["errors"] += done["errors"]
            out["seconds"]["explain"] += done["seconds"]
        for stage, work in (("reclassify", reclassify_shard), ("evaluate", evaluate_shard)):
            if shard in wanted.get(stage, ()):
                tick = time.perf_counter()
                done = work(config, shard, analysis, rows_of[shard])
                out["analysis_errors"] += done["errors"]
                out["seconds"][stage] += time.perf_counter() - tick
    for table, prefix in sharded_tables():
        parts.merge(run, table, shards[0], shards[-1], prefix)
    out["wall"] = time.perf_counter() - began
    return out


def compact_run(config: RunConfig, n_shards: int, rows_per_file: int = COMPACT_ROWS) -> int:
    """The finished run's parts merged into few large ones (ranges of whole tasks holding about
    ``rows_per_file`` manifest rows each); returns the parts left."""
    run = RunFolder(config.root)
    per_task = config.task_size // config.shard_size
    tasks_per_file = max(1, rows_per_file // config.task_size)
    return sum(parts.compact(run, table, tasks_per_file * per_task, n_shards, prefix)
               for table, prefix in sharded_tables())
