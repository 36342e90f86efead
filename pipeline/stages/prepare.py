"""Prepare a run: the manifest streamed into the run folder, the shard and task sizes chosen,
run.json and the mask store created (or a run folder reopened), and what a (re)run still has
to do."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import pyarrow.parquet as pq

from fidoflow.pipeline.archive.prepare import changed_files, summarise_manifest
from fidoflow.pipeline.archive.stream import EmptyArchive, open_manifest
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
    config, record = reopen(config)
    if record is not None:
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


@dataclass(frozen=True)
class Work:
    """What a (re)run of a prepared run folder still has to do: the config with its sizes
    resolved, its shards, per stage the shards to (re)do, the tasks (ranges of whole shards)
    holding any, and the images to explain."""

    config: RunConfig
    shards: int
    todo: dict[str, list[int]]
    tasks: list[range]
    images: int

    def of_task(self, task: range) -> dict[str, list[int]]:
        """Per stage, the task's shards that stage still needs (``todo``'s lists are sorted)."""
        return {stage: shards[bisect_left(shards, task.start):bisect_left(shards, task.stop)]
                for stage, shards in self.todo.items()}


def plan_work(config: RunConfig, analysis: AnalysisConfig | None = None) -> Work:
    """Prepare the run folder (``prepare_run``; ``analysis``: the run analyses with these
    settings, recorded in run.json) and list what it still needs: the shards not explained yet
    and those whose files changed since, and for an analysing run the shards each analysis
    stage has not done (or that are explained again)."""
    config, n_shards = prepare_run(config, analysis)
    if analysis is not None:
        record_analysis(config, analysis.to_json())
    explain = set(pending(config, "explain", n_shards)) | changed_shards(config)
    todo = {"explain": explain}
    if analysis is not None:
        todo |= {stage: set(pending(config, stage, n_shards)) | explain
                 for stage in tables.SHARD_STAGES[1:]}
    groups = needing(tasks(n_shards, config.task_size // config.shard_size),
                     set().union(*todo.values()))
    rows = manifest_rows(config)
    images = sum(min(config.shard_size, rows - s * config.shard_size) for s in explain)
    return Work(config, n_shards, {stage: sorted(s) for stage, s in todo.items()}, groups,
                images)
