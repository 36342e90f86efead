"""A whole run in this process, without Prefect or Dask (tests, benchmarks, a notebook)."""

from __future__ import annotations

from fidoflow.pipeline.config import DEFAULT_ANALYSIS, AnalysisConfig, RunConfig
from fidoflow.storage import tables
from fidoflow.storage.runfolder import RunFolder

from .aggregate import aggregate_run
from .prepare import prepare_run, record_analysis
from .shard import run_task


def run_in_process(config: RunConfig, analysis: AnalysisConfig = DEFAULT_ANALYSIS) -> RunFolder:
    """Every stage of every shard of ``config`` as one task in this process (``run_task``), then
    the aggregate: a run without Prefect or Dask (tests, benchmarks, a notebook)."""
    config, n_shards = prepare_run(config, analysis)
    record_analysis(config, analysis.to_json())
    shards = list(range(n_shards))
    run_task(config, analysis, shards, dict.fromkeys(tables.SHARD_STAGES, shards))
    aggregate_run(config, analysis)
    return RunFolder(config.root)
