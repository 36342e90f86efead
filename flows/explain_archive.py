"""The Prefect flow ``explain-archive``: manifest, then one task per shard on a Dask cluster."""

from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect_dask import DaskTaskRunner
from rich.progress import Progress

from . import stages
from .config import RunConfig


@task(name="explain-shard", cache_policy=NO_CACHE, persist_result=False, retries=1)
def explain_shard_task(config_json: dict, shard: int) -> dict[str, int]:
    config = RunConfig.from_json(config_json)
    stages.set_worker_threads(config.workers)
    return stages.explain_shard(config, shard)


def dask_runner(workers: int, address: str | None = None) -> DaskTaskRunner:
    """A LocalCluster of ``workers`` single-threaded processes, or an existing scheduler."""
    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True,
                        "host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"},
    )


@flow(name="explain-archive")
def explain_archive(config_json: dict) -> dict[str, int]:
    """Explain every pending shard of the run described by ``config_json`` (a RunConfig)."""
    config = RunConfig.from_json(config_json)
    n_shards = stages.prepare_run(config)
    todo = stages.pending_shards(config, n_shards)
    futures = [explain_shard_task.submit(config_json, shard) for shard in todo]
    images = errors = 0
    with Progress(transient=False) as progress:
        bar = progress.add_task("explaining", total=len(todo))
        for future in as_completed(futures):
            outcome = future.result()
            images += outcome["images"]
            errors += outcome["errors"]
            progress.update(bar, advance=1, description=f"shard {outcome['shard']} done")
    return {"shards": n_shards, "shards_run": len(todo), "images_run": images, "errors": errors}


def run_flow(config: RunConfig, address: str | None = None) -> dict[str, int]:
    """Run the flow with a task runner sized for ``config.workers``."""
    runner = dask_runner(config.workers, address)
    return explain_archive.with_options(task_runner=runner)(config.to_json())
