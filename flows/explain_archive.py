"""The Prefect flow ``explain-archive``: manifest, then per shard explain → re-classify and
evaluate on a Dask cluster, then one aggregate task (summary.parquet, report.html) and the
run's artifacts (the summary as a table, the report's location as markdown)."""

from __future__ import annotations

import math
import time
from dataclasses import replace

from distributed.scheduler import KilledWorker
from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture, as_completed
from prefect.runtime import flow_run
from rich.progress import Progress as RichProgress

from fidoflow.pipeline import stages
from fidoflow.pipeline.config import DEFAULT_ANALYSIS, AnalysisConfig, RunConfig
from fidoflow.pipeline.settings import RunSettings
from fidoflow.pipeline.stages.recovery import Attempt, Recovery
from fidoflow.storage import tables
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

SUMMARY_ARTIFACT = "fidoflow-summary"
PROGRESS_ARTIFACT = "fidoflow-progress"
REPORT_ARTIFACT = "fidoflow-report"
DEFAULT_SETTINGS = RunSettings()


@task(name="explain-shards", cache_policy=NO_CACHE, persist_result=False, retries=1,
      task_run_name="shards {first}-{last}")
def run_task(config_json: dict, analysis_json: dict, first: int, last: int,
             todo: dict[str, list[int]], busy_workers: int,
             left_out: tuple[str, ...] = ()) -> dict[str, object]:
    """One task of whole shards (stages.run_task; ``left_out``: images that killed their
    workers, recorded as errors); its worker's torch threads are the cores shared among the
    busy workers (a lone task gets every core). One log line says what it did."""
    config = RunConfig.from_json(config_json)
    stages.set_worker_threads(busy_workers)
    out = stages.run_task(config, AnalysisConfig.from_json(analysis_json),
                          list(range(first, last + 1)), todo, left_out)
    seconds = ", ".join(f"{stage} {value:.1f} s" for stage, value in out["seconds"].items()
                        if value)
    get_run_logger().info("shards %d-%d: %d images explained, %d errors, %d analysis errors "
                          "(%s)", first, last, out["images"], out["errors"],
                          out["analysis_errors"], seconds or "nothing to do")
    return out


@task(name="probe-image", cache_policy=NO_CACHE, persist_result=False,
      task_run_name="shard {shard}: image {image_id} alone")
def probe_task(config_json: dict, shard: int, image_id: str) -> bool:
    """Whether one image of a shard whose workers died can be explained alone (stages'
    ``probe_image``; nothing is written)."""
    stages.set_worker_threads(1)
    return stages.probe_image(RunConfig.from_json(config_json), shard, image_id)


@task(name="prepare-run", cache_policy=NO_CACHE, persist_result=False)
def prepare_task(config_json: dict, analysis_json: dict | None,
                 flow_run_id: str | None) -> stages.Work:
    """The run folder prepared, or its next increment listed, and what it still needs
    (stages.plan_work), on a worker: the manifest's rows never pass through the flow's
    process."""
    return stages.plan_work(RunConfig.from_json(config_json),
                            AnalysisConfig.from_json(analysis_json) if analysis_json else None,
                            flow_run_id)


@task(name="compact-run", cache_policy=NO_CACHE, persist_result=False)
def compact_task(config_json: dict, n_shards: int) -> int:
    """The finished run's parts merged into few large files."""
    return stages.compact_run(RunConfig.from_json(config_json), n_shards)


@task(name="aggregate-run", cache_policy=NO_CACHE, persist_result=False)
def aggregate_task(config_json: dict, analysis_json: dict) -> dict[str, object]:
    config = RunConfig.from_json(config_json)
    stages.set_worker_threads(config.workers)
    return stages.aggregate_run(config, AnalysisConfig.from_json(analysis_json))


def submit(attempt: Attempt, config_json: dict, analysis_json: dict, work: stages.Work,
           busy: int) -> PrefectFuture:
    """The task that carries out ``attempt``: a probe of one image, or the attempt's shards."""
    if attempt.probe is not None:
        return probe_task.submit(config_json, attempt.shards.start, attempt.probe)
    return run_task.submit(config_json, analysis_json, attempt.shards.start,
                           attempt.shards.stop - 1, work.of_task(attempt.shards), busy,
                           attempt.left_out)


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


class Progress:
    """The run's progress as a Prefect progress artifact (and a terminal bar): images done,
    errors, images per second, updated as each task ends."""

    def __init__(self, tasks: int, images: int, bar: RichProgress) -> None:
        self.tasks, self.images, self.bar = tasks, images, bar
        self.done = self.images_done = self.errors = self.lost = 0
        self.began = time.perf_counter()
        self.line = bar.add_task("explaining", total=tasks)
        self.artifact = create_progress_artifact(0.0, key=PROGRESS_ARTIFACT,
                                                 description=self.describe())

    def describe(self) -> str:
        rate = self.images_done / max(time.perf_counter() - self.began, 1e-9)
        lost = (f", {self.lost} workers lost (their tasks ran again)" if self.lost else "")
        return (f"{self.done} of {self.tasks} tasks, {self.images_done} of {self.images} images "
                f"explained, {self.errors} errors, {rate:.1f} images/s{lost}")

    def advance(self, outcome: dict) -> None:
        self.done += 1
        self.images_done += outcome["images"]
        self.errors += outcome["errors"] + outcome["analysis_errors"]
        self.bar.update(self.line, advance=1,
                        description=f"shards {outcome['first']}-{outcome['last']} done")
        update_progress_artifact(self.artifact, 100.0 * self.done / max(self.tasks, 1),
                                 self.describe())

    def worker_lost(self, replaced_by: int) -> None:
        """A worker died under a task, which ``replaced_by`` tasks take over."""
        self.lost += 1
        self.tasks += replaced_by - 1
        update_progress_artifact(self.artifact, 100.0 * self.done / max(self.tasks, 1),
                                 self.describe())


@flow(name="explain-run")
def explain_run(config_json: dict, analysis_json: dict | None = None,
                lease_token: str | None = None) -> dict[str, object]:
    """Explain, re-classify and evaluate every shard of the run described by ``config_json``
    (a RunConfig) that still needs it, in tasks of whole shards (pipeline/plan.py), at most
    ``WINDOW`` × workers of them in flight, so that the flow's memory and the Prefect database
    grow with the window, not the archive; then compact the run's parts and aggregate.
    ``analysis_json`` (an AnalysisConfig; default: its defaults) sets the analysis stages;
    ``lease_token`` (the folder's lease, taken by the caller) is what a worker must find there
    before any task runs."""
    config = RunConfig.from_json(config_json)
    analysis = AnalysisConfig.from_json(analysis_json) if analysis_json else DEFAULT_ANALYSIS
    analysis_json = analysis.to_json()
    workers_ready(check_worker_task.submit("fidoflow.pipeline.stages", config.root, lease_token))
    work = prepare_task.submit(config_json, analysis_json if config.analyse else None,
                               str(flow_run.get_id() or "") or None).result()
    config, config_json, todo = work.config, work.config.to_json(), work.todo
    busy = min(config.workers, max(len(work.tasks), 1))
    outcomes: list[dict] = []
    with RichProgress(transient=False) as bar:
        progress = Progress(len(work.tasks), work.images, bar)
        recovery = Recovery()
        waiting, running = [Attempt(group) for group in work.tasks], {}
        while waiting or running:
            while waiting and len(running) < WINDOW * config.workers:
                attempt = waiting.pop(0)
                running[submit(attempt, config_json, analysis_json, work, busy)] = attempt
            finished = next(as_completed(list(running)))
            attempt = running.pop(finished)
            try:
                outcome = finished.result()
            except KilledWorker as exc:  # the worker process died under it
                images = ({s: stages.shard_image_ids(config, s) for s in attempt.shards}
                          if len(attempt.shards) == 1 else {})
                then = recovery.after_death(attempt, images)
                if attempt.probe is None:
                    progress.worker_lost(sum(a.probe is None for a in then) or 1)
                get_run_logger().warning(
                    "%s: the worker running it died (%s); %s", attempt.label,
                    str(exc).splitlines()[0][:200], "; ".join(a.label for a in then)
                    or "waiting for the shard's other probes")
                waiting[:0] = then
                continue
            if attempt.probe is not None:
                waiting[:0] = recovery.after_probe(attempt)
                continue
            outcomes.append(outcome)
            progress.advance(outcomes[-1])
        parts_left = compact_task.submit(config_json, work.shards).result()
        summary = (aggregate_task.submit(config_json, analysis_json).result() if config.analyse
                   else {"summary": None, "report": None})
    if config.analyse:
        publish_artifacts(summary)
    stages.finish_increment(config, sum(o["images"] for o in outcomes),
                            sum(o["errors"] for o in outcomes))
    seconds = {stage: sum(o["seconds"][stage] for o in outcomes) for stage in tables.SHARD_STAGES}
    return {"shards": work.shards, "shards_run": len(todo["explain"]), "tasks": len(work.tasks),
            "images_run": sum(o["images"] for o in outcomes),
            "task_seconds": sum(o["wall"] for o in outcomes),
            "errors": sum(o["errors"] for o in outcomes),
            "shard_seconds": seconds["explain"],
            "analysis_seconds": seconds["reclassify"] + seconds["evaluate"],
            "first_shard_started": min((o["started"] for o in outcomes), default=float("inf")),
            "analysis_errors": sum(o["analysis_errors"] for o in outcomes),
            "reclassified": len(todo.get("reclassify", ())),
            "evaluated": len(todo.get("evaluate", ())), "parts": parts_left,
            "summary": summary["summary"], "report": summary["report"],
            "increment": work.increment}


@flow(name="explain-archive")
def explain_archive(archive: str, out: str, settings: RunSettings = DEFAULT_SETTINGS,
                    analysis_settings: dict | None = None) -> dict[str, object]:
    """Explain ``archive`` into the run folder ``out`` (what deployments and the CLI run).

    ``settings`` are the run's options (pipeline/settings.py; the CLI's ``--options`` by the same
    names), validated before anything starts. The run takes the folder's lease first, so a second
    run on ``out`` fails at once; the explain-run subflow gets the cluster ``plan_cluster`` picks.
    """
    guard_children()
    config = settings.to_config(archive, out)
    out = config.root  # absolute: the workers' working directories are not this process's
    plan = plan_cluster(config.workers, config.device, settings.dask_address, out, visible_gpus(),
                        settings.cluster, settings.cluster_options)
    if plan.address:
        check_scheduler(plan.address)
    if plan.task_device:
        config = replace(config, device=plan.task_device)
    with Lease(RunFolder(out)) as lease, patient_clients(settings.api_patience):
        stages.reopen(config)  # a folder of another run is refused before a cluster starts
        if not plan.address and stages.nothing_to_explain(config):
            plan = replace(plan, kind="threads", workers=1)  # the night brought nothing
        runner = build_runner(plan)
        with scheduler_loss_said(plan.address):
            return explain_run.with_options(task_runner=runner)(
                config.to_json(), analysis_settings, lease.token)


def run_flow(archive: str, out: str, settings: RunSettings,
             analysis_config: AnalysisConfig | None = None) -> dict[str, object]:
    """Run ``explain-archive`` for settings given on the command line."""
    payload = (analysis_config or DEFAULT_ANALYSIS).to_json()
    return explain_archive(archive, out, settings, payload)
