"""Prepare a run: the manifest streamed into the run folder, the shard and task sizes chosen,
run.json and the mask store created (or a run folder reopened), and what a (re)run still has
to do."""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace
from itertools import chain

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fidoflow.pipeline.archive.prepare import changed_files, summarise_manifest
from fidoflow.pipeline.archive.stream import ROWS, EmptyArchive, ManifestStream, open_manifest
from fidoflow.pipeline.config import AnalysisConfig, RunConfig
from fidoflow.pipeline.models.device import resolve_device
from fidoflow.pipeline.models.loading import LoadedModel
from fidoflow.pipeline.plan import (
    GPU_SPEEDUP,
    LARGEST_SHARD,
    PER_IMAGE,
    Cost,
    analysis_passes,
    auto_shard_size,
    forward_seconds,
    needing,
    task_size,
    tasks,
)
from fidoflow.pipeline.provenance import code_version
from fidoflow.storage import masks, parts, runrecord, tables
from fidoflow.storage.runfolder import SCHEMA_VERSION, RunFolder
from fidoflow.storage.shards import mask_rows, n_mask_rows

from . import increment
from .worker import model_of, visible_gpu

ROW_GROUP_ROWS = 8192  # manifest rows per row group, rounded to whole tasks


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

def _listing(config: RunConfig, model: LoadedModel) -> ManifestStream:
    """The archive's rows, streamed (nothing opened or hashed); an archive with none is
    refused."""
    stream = open_manifest(config.source, config.format, config.split, config.images_root,
                           model.class_names, config.label_map,
                           {"detection_threshold": config.detection_threshold,
                            "detection_categories": config.detection_categories}, config.crop)
    if stream.rows == 0:
        stream.close()
        where = "" if config.split == "all" else f" in the {config.split} split"
        raise EmptyArchive(f"{config.source} holds no images{where} (folders are searched "
                           "recursively for image files); nothing to do")
    return stream


def write_manifest(run: RunFolder, config: RunConfig, model: LoadedModel,
                   analysis: AnalysisConfig | None = None) -> tuple[RunConfig, dict]:
    """Stream the archive's rows into manifest.parquet (row groups of whole shards); returns
    the config with its shard and task sizes resolved, and what run.json records of the
    archive: the label report (``labels``) and the items that made no row (``archive``, e.g.
    empty camera-trap frames). Nothing is written when the archive itself is refused."""
    stream = _listing(config, model)
    try:
        config = plan_run(config, model, stream.rows, analysis)
        group = max(1, ROW_GROUP_ROWS // config.task_size) * config.task_size
        run.makedirs()
        first = pa.array([config.increment], pa.int32())
        batches = (batch.append_column("increment", pa.repeat(first[0], batch.num_rows))
                   for batch in stream.batches(config.shard_size, group))
        run.write_batches(batches, tables.MANIFEST.schema, tables.MANIFEST.path,
                          row_group_size=group)
        return config, {"labels": stream.mapper.report(), "archive": stream.counts}
    finally:
        stream.close()


def _listing_or_none(config: RunConfig, model: LoadedModel) -> ManifestStream | None:
    """The archive's rows, streamed, or None where it lists none any more."""
    try:
        return _listing(config, model)
    except EmptyArchive:
        return None


def _keys(config: RunConfig, stream: ManifestStream | None) -> pa.Table | None:
    """The listing's ids and paths, all that the comparison with the manifest holds."""
    if stream is None:
        return None
    return pa.Table.from_batches([b.select(["image_id", "path"]) for b in
                                  stream.batches(config.shard_size, ROW_GROUP_ROWS)],
                                 pa.schema([ROWS.field("image_id"), ROWS.field("path")]))


def _compared(known: pa.Table, keys: pa.Table | None) -> increment.Comparison:
    """The manifest's rows against the listing (none listed: every row gone)."""
    if keys is None:
        return increment.Comparison(np.empty(0, np.int64), [], known["image_id"].to_pylist())
    return increment.compare(known, keys)


def extend_manifest(run: RunFolder, config: RunConfig, model: LoadedModel,
                    last_listed: str | None) -> dict[str, int | None]:
    """An increment's listing: the archive listed again and compared with the manifest
    (pipeline/stages/increment.py); its new rows appended as new shards (the manifest
    rewritten, streamed and atomically, old rows unchanged), its removals recorded. An archive
    that lists nothing any more removes every row. Returns the counts for the increments
    table. Only ids and paths are held for the comparison; the new rows' other columns come
    from a second pass over the listing."""
    known = run.read_table(tables.MANIFEST.path, columns=["image_id", "path", "shard"])
    stream = _listing_or_none(config, model)
    try:
        keys = _keys(config, stream)
        found = _compared(known, keys)
        first_shard = int(pc.max(known["shard"]).as_py()) + 1 if known.num_rows else 0
        if len(found.new):
            added = increment.numbered(
                increment.new_rows(found, stream.batches(config.shard_size, ROW_GROUP_ROWS)),
                first_shard, config.shard_size, config.increment)
            with run.fs.open(run.local(tables.MANIFEST.path), "rb") as fh:
                old = pq.ParquetFile(fh)
                run.write_batches(chain(old.iter_batches(ROW_GROUP_ROWS), added.to_batches()),
                                  tables.MANIFEST.schema, tables.MANIFEST.path,
                                  row_group_size=ROW_GROUP_ROWS)
    finally:
        if stream is not None:
            stream.close()
    removed, back = increment.record_removed(run, found.gone, config.increment, last_listed)
    return {"images_listed": keys.num_rows if keys is not None else 0,
            "images_new": len(found.new), "images_removed": removed, "images_back": back,
            "first_shard": first_shard if len(found.new) else None}


def reopen(config: RunConfig) -> tuple[RunConfig, dict | None]:
    """The folder's run.json (None for a new run) and the config with the shard and task sizes
    its first run chose where these are automatic; refuses a folder of another table schema or
    of a run with other settings. One small JSON read: the flow checks it before it starts a
    cluster (a wrong ``--out`` costs no cluster start-up), ``prepare_run`` again on the worker."""
    run = RunFolder(config.root)
    record = runrecord.recorded(run)
    if record is None:
        return config, None
    recorded = record["config"]
    if config.shard_size is None:  # automatic: whatever the first run chose
        config = replace(config, shard_size=recorded.get("shard_size"))
    if config.task_size is None:
        config = replace(config, task_size=recorded.get("task_size"))
    runrecord.check_same(run, record, config.results_identity())
    return config, record


SETTLED_FOR = 60.0  # seconds a "nothing to explain" answer may serve the next ask
_settled: dict[tuple[str, str], float] = {}


def nothing_to_explain(config: RunConfig) -> bool:
    """Whether a rerun into ``config``'s folder would run no task: the folder is prepared, the
    archive lists no image its manifest lacks, no file changed and every shard has done every
    stage the run asks. The CLI and the flow ask it before they start a cluster, so a nightly
    run with nothing new starts none; a yes serves the next ask of the process once, within
    ``SETTLED_FOR`` seconds, so that the CLI's listing serves the flow it runs. It only
    decides where tasks run: ``prepare_run`` lists again all the same and records the
    increment (its removals included). A folder of other settings is refused here as by
    ``reopen``."""
    key = (config.root, config.source)
    answered = _settled.pop(key, None)
    if answered is not None and time.monotonic() - answered < SETTLED_FOR:
        return True
    run = RunFolder(config.root)
    config, record = reopen(config)
    if record is None or not run.exists(tables.MANIFEST.path):
        return False
    known = run.read_table(tables.MANIFEST.path, columns=["image_id", "path", "shard"])
    stream = _listing_or_none(config, model_of(config))
    try:
        if len(_compared(known, _keys(config, stream)).new):
            return False
    finally:
        if stream is not None:
            stream.close()
    n_shards = int(pc.max(known["shard"]).as_py()) + 1 if known.num_rows else 0
    stages = tables.SHARD_STAGES if config.analyse else tables.SHARD_STAGES[:1]
    if any(pending(config, stage, n_shards) for stage in stages) or changed_shards(config):
        return False
    _settled[key] = time.monotonic()
    return True


def prepare_run(config: RunConfig, analysis: AnalysisConfig | None = None,
                flow_run: str | None = None) -> tuple[RunConfig, int]:
    """Create the run folder (manifest.parquet, run.json, masks.zarr) or take its next
    increment (the archive listed again, new rows appended, the mask store grown). Returns
    the config with its sizes resolved (chosen now, or those the folder was made with) and its
    ``increment`` numbered, and the number of shards; ``analysis`` (when the run analyses)
    counts in the tasks' cost. The increment is recorded (``increments/``) before anything else
    is written, with ``flow_run``, the Prefect flow run doing it.

    The manifest is streamed before run.json is written: a source or option the readers refuse
    leaves no run behind (a rerun without run.json starts afresh).
    """
    run = RunFolder(config.root)
    model = model_of(config)
    config, record = reopen(config)
    if record is None or not run.exists(tables.MANIFEST.path):
        config = replace(config, increment=1)
        started = increment.now()
        config, found = write_manifest(run, config, model, analysis)
        if record is None:
            run.write_json({
                "schema_version": SCHEMA_VERSION, "config": config.results_identity(),
                "model": model.describe(), **found, "code_version": code_version(),
                "seed": config.seed, "created": started,
            }, runrecord.RECORD)
        listed = run.row_count(tables.MANIFEST.path)
        counts = {"images_listed": listed, "images_new": listed, "images_removed": 0,
                  "images_back": 0, "first_shard": 0}
    else:
        history = increment.read_increments(run)  # a killed increment's number is taken again
        config = replace(config, increment=len(history) + 1)
        started = increment.now()
        counts = extend_manifest(run, config, model,
                                 history[-1]["started"] if history else record.get("created"))
    increment.write_entry(run, config.increment, {"started": started, "flow_run_id": flow_run,
                                                  **counts})
    shards = run.read_table(tables.MANIFEST.path, columns=["shard"])["shard"].to_numpy()
    rows = n_mask_rows(shards, config.shard_size)

    def image_ids(first: int) -> Iterable[tuple[int, list[str]]]:
        """The manifest's ids of mask rows from ``first``, in runs of consecutive rows."""
        where = mask_rows(shards, config.shard_size)
        with run.fs.open(run.local(tables.MANIFEST.path), "rb") as fh:
            offset = 0
            for batch in pq.ParquetFile(fh).iter_batches(8192, columns=["image_id"]):
                ids, at = batch.column(0).to_pylist(), where[offset:offset + batch.num_rows]
                offset += batch.num_rows
                breaks = np.flatnonzero(np.diff(at) != 1) + 1
                for piece, rows_at in zip(np.split(np.arange(len(ids)), breaks),
                                          np.split(at, breaks), strict=True):
                    if len(piece) and rows_at[-1] >= first:
                        keep = rows_at >= first
                        yield int(rows_at[keep][0]), [ids[i] for i in piece[keep]]

    masks.create_store(
        run.masks_url, rows, config.shard_size, config.task_size, config.mask_size,
        {name: {**spec.to_json(), "maps": spec.map_names} for name, spec in config.methods.items()},
        image_ids)
    return config, int(shards.max()) + 1 if len(shards) else 0


def changed_shards(config: RunConfig) -> dict[int, int]:
    """Shards explained before whose files changed since (size or modification time), or
    whose missing files exist now, each with how many of its images did: a rerun redoes
    them."""
    run = RunFolder(config.root)
    images = parts.read_parts(run, tables.IMAGES).select(["image_id", "path", "bytes",
                                                          "mtime_ns"]).to_pylist()
    errors = parts.read_errors(run).to_pylist()
    missing = [e for e in errors if e["error_type"] == "MissingFile"]
    changed = changed_files(config.archive_root, images, missing)
    if not changed:
        return {}
    manifest = run.read_table(tables.MANIFEST.path, columns=["image_id", "shard"])
    ids, shards = manifest.column("image_id").to_pylist(), manifest.column("shard").to_pylist()
    return Counter(s for i, s in zip(ids, shards, strict=True) if i in changed)


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


@dataclass(frozen=True)
class Work:
    """What a (re)run of a prepared run folder still has to do: the config with its sizes
    resolved, its shards, per stage the shards to (re)do, the tasks (ranges of whole shards)
    holding any, the images to explain, and the increment's row (``increments/``)."""

    config: RunConfig
    shards: int
    todo: dict[str, list[int]]
    tasks: list[range]
    images: int
    increment: dict

    def of_task(self, task: range) -> dict[str, list[int]]:
        """Per stage, the task's shards that stage still needs (``todo``'s lists are sorted)."""
        return {stage: shards[bisect_left(shards, task.start):bisect_left(shards, task.stop)]
                for stage, shards in self.todo.items()}


def plan_work(config: RunConfig, analysis: AnalysisConfig | None = None,
              flow_run: str | None = None) -> Work:
    """Prepare the run folder (``prepare_run``: a new one, or the folder's next increment;
    ``analysis``: the run analyses with these settings, recorded in run.json; ``flow_run``: the
    Prefect flow run) and list what it still needs: the shards not explained yet and those
    whose files changed since, and for an analysing run the shards each analysis stage has not
    done (or that are explained again)."""
    config, n_shards = prepare_run(config, analysis, flow_run)
    if analysis is not None:
        record_analysis(config, analysis.to_json())
    changed = changed_shards(config)
    explain = set(pending(config, "explain", n_shards)) | set(changed)
    todo = {"explain": explain}
    if analysis is not None:
        todo |= {stage: set(pending(config, stage, n_shards)) | explain
                 for stage in tables.SHARD_STAGES[1:]}
    groups = needing(tasks(n_shards, config.task_size // config.shard_size),
                     set().union(*todo.values()))
    per_shard = np.bincount(RunFolder(config.root).read_table(
        tables.MANIFEST.path, columns=["shard"])["shard"].to_numpy(), minlength=n_shards)
    run = RunFolder(config.root)
    increment.write_entry(run, config.increment, {"images_changed": sum(changed.values())})
    return Work(config, n_shards, {stage: sorted(s) for stage, s in todo.items()}, groups,
                int(per_shard[sorted(explain)].sum()) if explain else 0,
                increment.read_increments(run)[config.increment - 1])


def finish_increment(config: RunConfig, explained: int, failed: int) -> None:
    """The increment's end in its row of ``increments/``."""
    increment.write_entry(RunFolder(config.root), config.increment, {
        "ended": increment.now(), "images_explained": explained, "images_failed": failed})
