"""The work on a shard: explain (masks and predictions), re-classify and evaluate, each
writing the shard's part last (storage/tables.py declares which), so a rerun skips the shards
whose part exists and redoes the rest; a task runs the stages of its shards, and a finished
run's parts are compacted."""

from __future__ import annotations

import time
from collections.abc import Collection, Iterator

import numpy as np

from fidoflow.pipeline.analysis.evaluate import evaluate_pictures
from fidoflow.pipeline.analysis.explain import explain_rows
from fidoflow.pipeline.analysis.reclassify import reclassify_pictures
from fidoflow.pipeline.analysis.records import exception_record
from fidoflow.pipeline.config import DEFAULT_ANALYSIS, AnalysisConfig, RunConfig
from fidoflow.pipeline.imaging.views import Picture, prepare_picture
from fidoflow.pipeline.models.device import resolve_device
from fidoflow.pipeline.models.loading import LoadedModel
from fidoflow.storage import masks, parts, tables
from fidoflow.storage.runfolder import RunFolder
from fidoflow.storage.shards import ExplainedShard, Todo, read_explained, shard_rows

from .layout import metrics_table, sharded_tables
from .worker import images_per_step, model_of

COMPACT_ROWS = 100_000  # manifest rows behind one part of a compacted run


WORKER_DIED = ("WorkerDied", ("every worker process explaining this image died (a crash in "
                              "decoding it or in the model); it was left out of its shard"))


def explain_shard(config: RunConfig, shard: int, rows: list[dict] | None = None,
                  left_out: Collection[str] = ()) -> dict[str, float]:
    """Masks and predictions of one shard (``rows``: its manifest rows, when the caller read
    them already); the predictions part, written last, marks it done. ``seconds`` is the
    shard's whole time on its worker (decode, explain, write). The images ``left_out`` (those
    that killed their workers) are not opened: each is a ``WorkerDied`` error row."""
    began, started = time.perf_counter(), time.time()
    run = RunFolder(config.root)
    start = shard * config.shard_size
    if rows is None:
        _, rows = shard_rows(run, shard, config.shard_size)
    result = explain_rows(model_of(config), config.archive_root, rows, config.methods,
                          config.seed, images_per_step(config), config.device,
                          config.decode_limits, config.compile, config.mask_size, config.target,
                          dict.fromkeys(left_out, WORKER_DIED))
    for method, maps in result.maps.items():
        masks.write_region(run.masks_url, method, start, maps)
    if any(region is not None for _, region in result.crops):
        boxes = np.full((len(rows), 4), np.nan, np.float32)
        for i, region in result.crops:
            if region is not None:
                boxes[i] = region
        masks.write_crops(run.masks_url, start, boxes)
    for table, extra in result.rows.items():  # the methods' own tables (sag/, concepts/)
        parts.write_part(run, tables.BY_NAME[table], shard, extra, increment=config.increment)
    if result.images:
        parts.write_part(run, tables.IMAGES, shard, result.images, increment=config.increment)
    parts.finish_shard(run, "explain", shard, result.predictions, result.errors,
                       increment=config.increment)
    return {"shard": shard, "images": len(rows), "errors": len(result.errors),
            "seconds": time.perf_counter() - began, "started": started}


def probe_image(config: RunConfig, shard: int, image_id: str) -> bool:
    """Explain one image of ``shard`` alone and write nothing: whether it leaves its worker
    alive is the answer (a worker that dies never returns)."""
    _, rows = shard_rows(RunFolder(config.root), shard, config.shard_size)
    explain_rows(model_of(config), config.archive_root,
                 [r for r in rows if r["image_id"] == image_id], config.methods, config.seed,
                 images_per_step(config), config.device, config.decode_limits, config.compile,
                 config.mask_size, config.target)
    return True


def shard_image_ids(config: RunConfig, shard: int) -> list[str]:
    """The ids of ``shard``'s images, in manifest order."""
    return [r["image_id"] for r in shard_rows(RunFolder(config.root), shard,
                                              config.shard_size)[1]]


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
    parts.finish_shard(run, "reclassify", shard, records, errors, increment=config.increment)
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
            parts.write_part(run, tables.BY_NAME[table], shard, extra,
                             increment=config.increment)
    parts.finish_shard(run, "evaluate", shard, records, errors, metrics_table(),
                       increment=config.increment)
    return {"shard": shard, "images": len(todo) - len(errors), "errors": len(errors)}


def run_task(config: RunConfig, analysis: AnalysisConfig, shards: list[int],
             todo: dict[str, list[int]], left_out: Collection[str] = ()) -> dict[str, object]:
    """One task: the stages each of its ``shards`` still needs (``todo``: stage -> shards),
    shard by shard (each shard's parts written as it finishes: a task that dies loses only its
    unfinished shard), then the task's parts merged into one per table; the images
    ``left_out`` (they killed their workers) become error rows."""
    began, started = time.perf_counter(), time.time()
    wanted = {stage: set(shards_) for stage, shards_ in todo.items()}
    run = RunFolder(config.root)
    rows_of: dict[int, list[dict]] = {s: [] for s in shards}
    for row in run.read_table(tables.MANIFEST.path, filters=[
            ("shard", ">=", shards[0]), ("shard", "<=", shards[-1])]).to_pylist():
        rows_of[row["shard"]].append(row)  # the task's rows, read once
    out: dict[str, object] = {"first": shards[0], "last": shards[-1], "images": 0,
                              "errors": 0, "analysis_errors": 0, "started": started,
                              "seconds": dict.fromkeys(tables.SHARD_STAGES, 0.0)}
    for shard in shards:
        if shard in wanted.get("explain", ()):
            done = explain_shard(config, shard, rows_of[shard], left_out)
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
