"""The Prefect flow ``explain-archive``: manifest, then per shard explain → re-classify and
evaluate on a Dask cluster, then one aggregate task (summary.parquet, report.html) and the
run's artifacts (the summary as a table, the report's location as markdown)."""

from __future__ import annotations

import math
import time
from dataclasses import replace

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture, as_completed
from rich.progress import Progress

from fidoflow.pipeline.config import DEFAULT_ANALYSIS, AnalysisConfig, RunConfig
from fidoflow.pipeline.settings import RunSettings
from fidoflow.storage import tables
from fidoflow.storage.lease import Lease
from fidoflow.storage.runfolder import RunFolder

from . import stages
from .cluster import build_runner, check_scheduler, plan_cluster, visible_gpus
from .reaper import guard_children

SUMMARY_ARTIFACT = "fidoflow-summary"
REPORT_ARTIFACT = "fidoflow-report"
DEFAULT_SETTINGS = RunSettings()
WORKER_CHECK_SECONDS = 180.0  # a remote cluster may still be starting its workers


@task(name="check-worker", cache_policy=NO_CACHE, persist_result=False)
def check_worker_task() -> int:
    """Runs on a worker before any shard: the worker can import and run fidoflow's tasks."""
    import os

    from . import stages  # noqa: F401 - what every shard task imports
    return os.getpid()


def workers_ready(probe: PrefectFuture) -> None:
    """Fail with one line when no worker runs the probe (tasks that cannot be imported there,
    workers that die or never come), instead of waiting for shards that never run."""
    try:
        probe.result(timeout=WORKER_CHECK_SECONDS)
    except Exception as exc:  # any cause ends the run, named
        cause = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        raise RuntimeError(f"the Dask workers cannot run fidoflow's tasks ({cause})") from exc


@task(name="explain-shard", cache_policy=NO_CACHE, persist_result=False, retries=1)
def explain_shard_task(config_json: dict, shard: int, busy_workers: int) -> dict[str, float]:
    """One shard; its worker's torch threads are the cores shared among the busy workers
    (a lone shard gets every core)."""
    config = RunConfig.from_json(config_json)
    stages.set_worker_threads(busy_workers)
    return stages.explain_shard(config, shard)


@task(name="reclassify-shard", cache_policy=NO_CACHE, persist_result=False, retries=1)
def reclassify_shard_task(config_json: dict, analysis_json: dict, shard: int) -> dict[str, float]:
    config = RunConfig.from_json(config_json)
    stages.set_worker_threads(config.workers)
    began = time.perf_counter()
    outcome = stages.reclassify_shard(config, shard, AnalysisConfig.from_json(analysis_json))
    return {**outcome, "seconds": time.perf_counter() - began}


@task(name="evaluate-shard", cache_policy=NO_CACHE, persist_result=False, retries=1)
def evaluate_shard_task(config_json: dict, analysis_json: dict, shard: int) -> dict[str, float]:
    config = RunConfig.from_json(config_json)
    stages.set_worker_threads(config.workers)
    began = time.perf_counter()
    outcome = stages.evaluate_shard(config, shard, AnalysisConfig.from_json(analysis_json))
    return {**outcome, "seconds": time.perf_counter() - began}


@task(name="aggregate-run", cache_policy=NO_CACHE, persist_result=False)
def aggregate_task(config_json: dict, analysis_json: dict) -> dict[str, object]:
    config = RunConfig.from_json(config_json)
    stages.set_worker_threads(config.workers)
    return stages.aggregate_run(config, AnalysisConfig.from_json(analysis_json))


def publish_artifacts(outcome: dict[str, object]) -> None:
    """The summary table as a Prefect table artifact, the report's location as markdown."""
    import pandas as pd

    root = str(outcome["summary"]).rsplit("/", 1)[0]
    summary = RunFolder(root).read_table(tables.SUMMARY.path).to_pandas()
    records = [{k: (None if isinstance(v, float) and math.isnan(v) else v)
                for k, v in row.items()}
               for row in summary.astype(object).where(pd.notna(summary), None).to_dict("records")]
    create_table_artifact(records, key=SUMMARY_ARTIFACT,
                          description=f"fidoflow summary of {root} (summary.parquet, "
                                      "schema in docs/tables.md)")
    top1 = summary[(summary["section"] == "accuracy") & (summary["group_by"] == "overall")
                   & (summary["statistic"] == "top1")]
    lines = ["# fidoflow report", "", f"- report: [{outcome['report']}]({outcome['report']})",
             f"- summary: `{outcome['summary']}` ({len(summary)} rows)"]
    if len(top1):
        lines += ["", "| method | variant | top-1 | 95 % CI | images |", "|---|---|---|---|---|"]
        lines += [f"| {r.method} | {r.variant} | {r.value:.1%} | {r.ci_low:.1%} – {r.ci_high:.1%}"
                  f" | {r.n} |" for r in top1.itertuples()]
    create_markdown_artifact("\n".join(lines), key=REPORT_ARTIFACT,
                             description="where the run's report.html lies")


@flow(name="explain-run")
def explain_run(config_json: dict, analysis_json: dict | None = None) -> dict[str, object]:
    """Explain every pending shard of the run described by ``config_json`` (a RunConfig), then
    re-classify and evaluate each shard as soon as it is explained (shards explained in this
    run are redone downstream, others only where their part is missing), then aggregate.
    ``analysis_json`` (an AnalysisConfig; default: its defaults) sets the analysis stages."""
    config = RunConfig.from_json(config_json)
    analysis_json = (AnalysisConfig.from_json(analysis_json) if analysis_json
                     else DEFAULT_ANALYSIS).to_json()
    probe = check_worker_task.submit()  # workers start while the run folder is prepared
    config, n_shards = stages.prepare_run(config)
    config_json = config.to_json()
    if config.analyse:
        stages.record_analysis(config, analysis_json)
    # shards not explained yet, and those whose files changed since they were
    todo = sorted(set(stages.pending(config, "explain", n_shards)) | stages.changed_shards(config))
    later = set(todo)
    downstream = {
        stage: [s for s in stages.pending(config, stage, n_shards) if s not in later]
        for stage in ("reclassify", "evaluate")} if config.analyse else {}
    tasks = ({"reclassify": reclassify_shard_task, "evaluate": evaluate_shard_task}
             if config.analyse else {})
    totals = {stage: len(shards) + len(todo) for stage, shards in downstream.items()}
    futures = []
    workers_ready(probe)

    def submit_downstream(shard: int, stage: str) -> None:
        futures.append((stage, tasks[stage].submit(config_json, analysis_json, shard)))

    for stage, shards in downstream.items():
        for shard in shards:
            submit_downstream(shard, stage)
    busy = min(config.workers, max(len(todo), 1))
    explain_futures = [explain_shard_task.submit(config_json, shard, busy) for shard in todo]
    images = errors = analysis_errors = 0
    shard_seconds, analysis_seconds, first_start = 0.0, 0.0, float("inf")
    with Progress(transient=False) as progress:
        bar = progress.add_task("explaining", total=len(todo))
        bars = {stage: progress.add_task(stage, total=total) for stage, total in totals.items()}
        for future in as_completed(explain_futures):
            outcome = future.result()
            images += outcome["images"]
            shard_seconds += outcome["seconds"]
            first_start = min(first_start, outcome["started"])
            errors += outcome["errors"]
            progress.update(bar, advance=1, description=f"shard {outcome['shard']} explained")
            for stage in tasks:
                submit_downstream(outcome["shard"], stage)
        by_future = {id(f): stage for stage, f in futures}
        for future in as_completed([f for _, f in futures]):
            outcome = future.result()
            analysis_errors += outcome["errors"]
            analysis_seconds += outcome["seconds"]
            stage = by_future[id(future)]
            progress.update(bars[stage], advance=1,
                            description=f"{stage}: shard {outcome['shard']} done")
        summary = (aggregate_task.submit(config_json, analysis_json).result() if config.analyse
                   else {"summary": None, "report": None})
    if config.analyse:
        publish_artifacts(summary)
    return {"shards": n_shards, "shards_run": len(todo), "images_run": images, "errors": errors,
            "shard_seconds": shard_seconds, "analysis_seconds": analysis_seconds,
            "first_shard_started": first_start,
            "analysis_errors": analysis_errors, "reclassified": totals.get("reclassify", 0),
            "evaluated": totals.get("evaluate", 0),
            "summary": summary["summary"], "report": summary["report"]}


@flow(name="explain-archive")
def explain_archive(archive: str, out: str, settings: RunSettings = DEFAULT_SETTINGS,
                    analysis_settings: dict | None = None) -> dict[str, object]:
    """Explain ``archive`` into the run folder ``out`` (what deployments and the CLI run).

    ``settings`` are the run's options (flows/settings.py; the CLI's ``--options`` by the same
    names), validated before anything starts. The run takes the folder's lease first, so a second
    run on ``out`` fails at once; the explain-run subflow gets the cluster ``plan_cluster`` picks.
    """
    guard_children()
    config = settings.to_config(archive, out)
    plan = plan_cluster(config.workers, config.device, settings.dask_address, out, visible_gpus())
    if plan.address:
        check_scheduler(plan.address)
    if plan.task_device:
        config = replace(config, device=plan.task_device)
    with Lease(RunFolder(out)):
        runner = build_runner(plan)
        return explain_run.with_options(task_runner=runner)(config.to_json(), analysis_settings)


def run_flow(archive: str, out: str, settings: RunSettings,
             analysis_config: AnalysisConfig | None = None) -> dict[str, object]:
    """Run ``explain-archive`` for settings given on the command line."""
    payload = (analysis_config or DEFAULT_ANALYSIS).to_json()
    return explain_archive(archive, out, settings, payload)
