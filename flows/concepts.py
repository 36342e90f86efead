"""The ``learn-concepts`` flow: the features in one pass over the archive, a task per part of
its images on the Dask cluster that ``plan_cluster`` picks (as ``explain-archive`` gets), then a
task per class's XNN and NMF bank there, then the card (pipeline/concepts/job.py does the work;
this is wiring)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TypeVar

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture, as_completed

from fidoflow.pipeline.concepts import job as steps
from fidoflow.pipeline.settings import ConceptSettings
from fidoflow.storage.lease import Lease
from fidoflow.storage.runfolder import RunFolder

from .checks import check_worker_task, workers_ready
from .cluster import (
    WINDOW,
    build_runner,
    check_scheduler,
    plan_cluster,
    scheduler_loss_said,
    visible_gpus,
)
from .reaper import guard_children
from .server import patient_clients

DEFAULT_SETTINGS = ConceptSettings()
TASK = {"cache_policy": NO_CACHE, "persist_result": False}
T = TypeVar("T")


def windowed(submit: Callable[[T], PrefectFuture], items: list[T], limit: int) -> list[dict]:
    """Each item's task result, in the items' order, with at most ``limit`` tasks in flight
    (CUB's 200 classes and an archive's parts are not all submitted at once)."""
    results: dict[int, dict] = {}
    running: dict[PrefectFuture, int] = {}
    waiting = list(enumerate(items))
    while waiting or running:
        while waiting and len(running) < limit:
            at, item = waiting.pop(0)
            running[submit(item)] = at
        finished = next(as_completed(list(running)))
        results[running.pop(finished)] = finished.result()
    return [results[at] for at in range(len(items))]


@task(name="extract-features", task_run_name="images {first}-{last}", retries=1, **TASK)
def extract_task(job: steps.ConceptJob, rows: pd.DataFrame, first: int, last: int) -> dict:
    return steps.extract_part(job, rows)


@task(name="merge-features", **TASK)
def merge_task(job: steps.ConceptJob, firsts: list[int]) -> dict:
    return steps.merge_features(job, firsts)


@task(name="train-class-concepts", task_run_name="class {index}", **TASK)
def train_task(job: steps.ConceptJob, index: int) -> dict:
    return steps.train_class(job, index)


@flow(name="learn-concepts-on-cluster")
def learn_on_cluster(job: steps.ConceptJob, lease_token: str | None = None,
                     workers: int = 1) -> dict:
    """Extraction parts, merge, classes and card of ``job``, each task on the flow's cluster
    of ``workers`` (whose workers must see the folder's lease, ``lease_token``, before any
    task runs), ``WINDOW`` tasks per worker in flight."""
    logger = get_run_logger()
    workers_ready(check_worker_task.submit("fidoflow.pipeline.concepts.job", job.out,
                                           lease_token))
    summary = steps.extracted(job)
    if summary is None:
        parts = steps.extraction_parts(job)
        done = windowed(lambda rows: extract_task.submit(job, rows, int(rows.index[0]),
                                                         int(rows.index[-1])),
                        parts, WINDOW * workers)
        images = sum(outcome["images"] for outcome in done)
        logger.info("features of %d images in %d tasks", images, len(parts))
        summary = merge_task.submit(job, [int(rows.index[0]) for rows in parts]).result()
    logger.info("features of %d images at the %s (%d channels)", summary["images"],
                f"{summary['layer']['side']} of {summary['layer']['name']}", summary["channels"])
    classes = steps.classes_to_train(job)
    entries = dict(zip(classes, windowed(lambda i: train_task.submit(job, i), classes,
                                         WINDOW * workers), strict=True))
    for i, entry in entries.items():
        logger.info("class %d %s: %d concepts, R² %.3f", i, entry["class"], entry["concepts"],
                    entry["val_r2"])
    return steps.write_card(job, entries, summary)


@flow(name="learn-concepts", log_prints=False)
def learn_concepts(archive: str, out: str, settings: ConceptSettings = DEFAULT_SETTINGS) -> dict:
    """Learn each class's concepts of ``settings.model`` on ``archive`` into ``out`` (a rerun
    keeps the parts extracted and the classes trained with the same settings). ``settings``
    are the options of fidoflow/pipeline/settings.py (the CLI's ``--options`` by the same
    names); the folder's lease keeps a second training out of it."""
    guard_children()
    job = settings.to_job(archive, out)
    out = job.out  # absolute: the workers' working directories are not this process's
    plan = plan_cluster(settings.workers, settings.device, settings.dask_address, out,
                        visible_gpus(), settings.cluster, settings.cluster_options)
    if plan.address:
        check_scheduler(plan.address)
    if plan.task_device:
        job = replace(job, device=plan.task_device)
    with Lease(RunFolder(out)) as lease, patient_clients(settings.api_patience):
        card = steps.finished_card(job)
        if card is not None:
            get_run_logger().info("%s holds every class's concepts already", out)
            return card
        with scheduler_loss_said(plan.address):
            return learn_on_cluster.with_options(task_runner=build_runner(plan))(
                job, lease.token, plan.workers)
