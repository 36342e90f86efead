"""The stages of a run as plain functions on a run folder: storage/ read, the domain called,
the results written back. No Prefect or Dask inside: flows/explain_archive.py runs them as
tasks on a cluster; ``run_in_process`` runs them here (a notebook, a test, a benchmark).

- ``prepare``: manifest, shard and task sizes, run.json, mask store; what a rerun still needs;
- ``shard``: explain, re-classify and evaluate a shard; a task of shards; compaction;
- ``aggregate``: summary.parquet and report.html;
- ``worker``: what each worker process keeps (the model, its batch size, its threads);
- ``layout``: the tables this run writes (the metrics' columns, the sharded tables).
"""

from .aggregate import aggregate_run, build_report
from .inprocess import run_in_process
from .layout import metrics_table, sharded_tables
from .prepare import (
    Work,
    changed_shards,
    finish_increment,
    manifest_report,
    manifest_rows,
    nothing_to_explain,
    pending,
    plan_work,
    prepare_run,
    record_analysis,
    reopen,
)
from .shard import (
    compact_run,
    evaluate_shard,
    explain_shard,
    probe_image,
    reclassify_shard,
    run_task,
    shard_image_ids,
)
from .worker import images_per_step, model_of, set_worker_threads, worker_model

__all__ = [
    "Work",
    "aggregate_run",
    "build_report",
    "changed_shards",
    "compact_run",
    "evaluate_shard",
    "explain_shard",
    "finish_increment",
    "images_per_step",
    "manifest_report",
    "manifest_rows",
    "metrics_table",
    "model_of",
    "nothing_to_explain",
    "pending",
    "plan_work",
    "prepare_run",
    "probe_image",
    "reclassify_shard",
    "record_analysis",
    "reopen",
    "run_in_process",
    "run_task",
    "set_worker_threads",
    "shard_image_ids",
    "sharded_tables",
    "worker_model",
]
