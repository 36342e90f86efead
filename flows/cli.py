"""``fidoflow``: explain an archive of images (``run``) or the bundled photos (``demo``), list
the attribution methods (``methods``), train a classifier to explain (``train``), or learn
its concepts (``concepts``, for the methods ``xnn-spatial``, ``xnn`` and ``nmf``). The
options are projected from the settings declarations (fidoflow/pipeline/settings.py)."""

from __future__ import annotations

import argparse
import atexit
import importlib
import logging
import os
import signal
import sys
import time
import traceback
from contextlib import ExitStack, nullcontext
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from .server import ApiServer, api_server, flush_prefect_logs, patient_clients, prefect_home

if TYPE_CHECKING:
    from collections.abc import Callable

    from fidoflow.pipeline.config import RunConfig
    from fidoflow.pipeline.settings import ClusterSettings, RunSettings, Settings

COMMANDS_WITH_A_SERVER = ("run", "demo", "concepts", "train")
S = TypeVar("S", bound="ClusterSettings")
T = TypeVar("T")


def build_parser() -> argparse.ArgumentParser:
    from fidoflow.pipeline.settings import ARCHIVE_FIELDS

    from .settings import add_cli_options

    parser = argparse.ArgumentParser(prog="fidoflow", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="explain every image of SOURCE into the run folder RUN")
    run.add_argument("source", metavar="SOURCE",
                     help="a folder (plain, ImageFolder, CUB-200-2011, or holding one COCO "
                          "camera-trap JSON or manifest.csv/.parquet), or a manifest "
                          "CSV/Parquet or COCO JSON file; see docs/manifest.md")
    run.add_argument("--out", required=True, metavar="RUN",
                     help="run folder: a path or fsspec URL (file://, s3://, memory://)")
    add_cli_options(run)

    demo = commands.add_parser("demo", help="explain scikit-image's bundled photos, no data needed")
    demo.add_argument("--out", default="runs/demo", metavar="RUN", help="run folder")
    add_cli_options(demo, skip=ARCHIVE_FIELDS)
    methods = commands.add_parser("methods", help="list the registered attribution methods, "
                                                  "their settings and defaults")
    methods.add_argument("--model", help="also list this model's layers, the names "
                                         "gradcam:layer=... and concepts --layer take")
    methods.add_argument("--model-card", help="the model's card, where it is not beside it")

    add_train_command(commands)
    add_concepts_command(commands)
    return parser


def add_train_command(commands: argparse._SubParsersAction) -> None:
    """The ``train`` sub-command: ARCHIVE, --out, and one option per training setting."""
    from fidoflow.pipeline.settings import TrainSettings

    from .settings import add_cli_options

    train = commands.add_parser(
        "train", help="train a fine-grained classifier (class maps, diversification block, "
                      "gradient-boosting loss) on ARCHIVE's training images")
    train.add_argument("archive", metavar="ARCHIVE",
                       help="any archive fidoflow reads (ImageFolder, CUB, manifest, ...) with "
                            "labels; its train split is used when it has one")
    train.add_argument("--out", required=True, metavar="MODEL_DIR",
                       help="output folder: model.pt + model.yaml, checkpoint.pt, "
                            "metrics.parquet; an existing checkpoint is resumed")
    add_cli_options(train, TrainSettings)


def add_concepts_command(commands: argparse._SubParsersAction) -> None:
    """The ``concepts`` sub-command: ARCHIVE, --out, and one option per concept setting."""
    from fidoflow.pipeline.settings import ConceptSettings

    from .settings import add_cli_options

    concepts = commands.add_parser(
        "concepts", help="learn each class's concepts of a classifier (the spatial and the "
                         "pooled XNN, and the NMF baseline) on ARCHIVE's images, for --method "
                         "xnn-spatial,xnn,nmf --concepts DIR")
    concepts.add_argument("archive", metavar="ARCHIVE",
                          help="any archive fidoflow reads, labelled with the model's classes "
                               "(or give --classes)")
    concepts.add_argument("--out", required=True, metavar="CONCEPTS_DIR",
                          help="output folder: features.pt, one class-XXXXX.pt per class, "
                               "concepts.json; a rerun keeps the classes already trained")
    add_cli_options(concepts, ConceptSettings)


def flow_inputs(args: argparse.Namespace, model: type[Settings]) -> tuple[str, Settings, object]:
    """ARCHIVE resolved, the command's settings and the job they describe (``to_job``),
    refused before the flow starts when bad."""
    from .settings import settings_from_cli

    archive = str(Path(args.archive).resolve())
    if not Path(archive).exists():
        raise FileNotFoundError(f"archive not found: {args.archive}")
    settings = settings_from_cli(args, model)
    return archive, settings, settings.to_job(archive, args.out)


def run_concepts(args: argparse.Namespace, api: ApiServer) -> int:
    """Run the learn-concepts flow against ``api`` on a cluster started meanwhile
    (``prestart``; none when the folder holds every class already); print what each class
    learned."""
    from fidoflow.pipeline.concepts import job as steps
    from fidoflow.pipeline.settings import ConceptSettings

    from .reaper import guard_children

    guard_children()
    archive, settings, job = flow_inputs(args, ConceptSettings)

    def warm(task_device: str | None) -> Callable[[], object]:
        return partial(steps.warm_worker, replace(job, device=task_device or job.device))

    with ExitStack() as clusters:
        clusters.enter_context(patient_clients(settings.api_patience))  # workers inherit it
        if steps.finished_card(job) is None:
            settings = prestart(clusters, settings, args.out, "concepts", warm)
        from .concepts import learn_concepts

        card = on_server(api, lambda: learn_concepts(archive, args.out, settings))
    for entry in card["classes"].values():
        print(f"{entry['class']}: {entry['spatial_concepts']} concepts, held-out R² "
              f"{entry['spatial_val_r2']:.3f} (pooled XNN: {entry['concepts']}, "
              f"{entry['val_r2']:.3f})")
    print(f"{len(card['classes'])} classes, features of {card['images']} images at the "
          f"{card['layer']['side']} of {card['layer']['name']}")
    print(f"concepts: {args.out}  (fidoflow run SOURCE --out RUN --model {settings.model} "
          f"--method xnn-spatial,nmf --concepts {args.out})")
    return 0


def run_train(args: argparse.Namespace, api: ApiServer) -> int:
    """Run the train-classifier flow against ``api``; print where the model is."""
    from fidoflow.pipeline.settings import TrainSettings

    archive, settings, _ = flow_inputs(args, TrainSettings)
    from .train import train_classifier

    summary = on_server(api, lambda: train_classifier(archive, args.out, settings, progress=True))
    test = summary["test_accuracy"]
    print(f"best epoch {summary['best_epoch']} of {summary['epochs']}: validation accuracy "
          f"{summary['val_accuracy']:.3f}"
          + (f", test accuracy {test:.3f}" if test is not None else "")
          + f" ({summary['classes']} classes, {summary['images']['train']} training images)")
    print(f"model: {summary['model']}  (fidoflow run SOURCE --out RUN --model {summary['model']})")
    return 0


def increment_line(entry: dict) -> str:
    """What this run of the folder found in the archive (its row of ``increments/``)."""
    number = entry["increment"]
    if number == 1:
        return f"increment 1: {entry['images_new']} images listed"
    line = (f"increment {number}: {entry['images_new']} new images, "
            f"{entry['images_changed']} changed, {entry['images_removed']} removed, "
            f"{entry['images_back']} back")
    return line + ("; the archive lists no image now: every row is flagged removed, none "
                   "deleted" if entry["images_listed"] == 0 else "")


def report_lines(config: RunConfig) -> list[str]:
    """Warnings about refused rows and labels the model cannot score (never fatal)."""
    from fidoflow.pipeline.archive.prepare import manifest_warnings
    from fidoflow.pipeline.stages import manifest_report

    try:
        return manifest_warnings(manifest_report(config))
    except Exception:  # noqa: BLE001 - a report must never fail a finished run
        return []


def prestart(clusters: ExitStack, settings: S, out: str, flow_module: str,
             warm: Callable[[str | None], Callable[[], object]]) -> S:
    """The cluster of ``plan_cluster``, started now when it is local (or CUDA), its workers
    running ``warm(task_device)()`` (import the tasks, load the model) while this process
    imports ``flow_module`` and the API server boots: start-up costs the slowest of them, not
    their sum. Returns ``settings`` pointed at the cluster (``dask_address``); the cluster
    closes with ``clusters``."""
    from .cluster import plan_cluster, prestarted, start_fork_server, visible_gpus

    plan = plan_cluster(settings.workers, settings.device, settings.dask_address, out,
                        visible_gpus(), settings.cluster, settings.cluster_options)
    tasks_module = f"{__package__}.{flow_module}"
    if plan.kind == "local":
        start_fork_server(tasks_module)  # the local workers' imports begin now, beside the flow's
    importlib.import_module(tasks_module)
    address = clusters.enter_context(prestarted(plan, warm(plan.task_device)))
    if not address:
        return settings
    update: dict[str, str] = {"dask_address": address}
    if settings.device.startswith("cuda"):
        update["device"] = "cuda"  # each worker sees only its own GPU
    return settings.model_copy(update=update)


def on_server(api: ApiServer, call: Callable[[], T]) -> T:
    """``call()`` against ``api`` once it answers (a private server: no flow heartbeats, which
    no one watches and which cost ~1 s at each flow's end); its logs sent before it stops."""
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        temporary_settings,
    )

    updates = {PREFECT_API_URL: api.ready()}
    if api.private:
        updates[PREFECT_FLOWS_HEARTBEAT_FREQUENCY] = None
    with temporary_settings(updates=updates):
        try:
            return call()
        finally:
            flush_prefect_logs()


def execute(source: str, out: str, settings: RunSettings, api: ApiServer) -> dict[str, int]:
    """Run the explain-archive flow against ``api`` (booting since the command began unless
    PREFECT_API_URL is set) on a cluster started meanwhile (``prestart``; none when the
    folder has nothing to explain)."""
    from fidoflow.pipeline import stages

    from .cluster import warm_worker
    from .reaper import guard_children

    guard_children()  # the API server and the Dask cluster end with this process, however
    config = settings.to_config(source, out)

    def warm(task_device: str | None) -> Callable[[], object]:
        return partial(warm_worker, replace(config, device=task_device or config.device).to_json())

    with ExitStack() as clusters:
        clusters.enter_context(patient_clients(settings.api_patience))  # workers inherit it
        if settings.dask_address or not stages.nothing_to_explain(config):
            settings = prestart(clusters, settings, out, "explain_archive", warm)
        from .explain_archive import run_flow

        return on_server(api, lambda: run_flow(source, out, settings))


def terminate_on_sigterm() -> None:
    """SIGTERM ends the CLI like Ctrl-C does: cleanup code runs, the status says why."""
    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def log_path() -> Path:
    return prefect_home() / "fidoflow.log"


def quiet_console() -> None:
    """Prefect's console lines (and the tracebacks of failed runs) go to ``log_path()``, not
    the terminal, here and in every worker process; the terminal shows the progress bars and
    the outcome. The run's logs also stay in the Prefect API's database."""
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
    # Prefect's own services (the events and log senders that retry while an API is away)
    # write to a stderr handler of their own: in workers they follow the console's level
    os.environ.setdefault("PREFECT_LOGGING_LOGGERS_PREFECT_INTERNAL_HANDLERS", "console")
    handler = logging.FileHandler(log_path())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    handler.setLevel(logging.INFO)
    logging.getLogger().addHandler(handler)
    internal = logging.getLogger("prefect._internal")  # configured already in this process
    for stream in [h for h in internal.handlers if isinstance(h, logging.StreamHandler)]:
        internal.removeHandler(stream)
    internal.addHandler(handler)


def fail(exc: BaseException) -> int:
    """One ``fidoflow: error:`` line; the traceback goes to the log file, not the terminal."""
    log = log_path()
    with open(log, "a") as fh:
        traceback.print_exception(exc, file=fh)
    away = api_away(exc)
    if away:
        print(f"fidoflow: error: {away}; the shards finished so far are kept: rerun the same "
              f"command to resume (details: {log})", file=sys.stderr)
        return 1
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    known = isinstance(exc, (ValueError, RuntimeError, FileNotFoundError, NotADirectoryError))
    prefix = "" if known else f"{type(exc).__name__}: "
    print(f"fidoflow: error: {prefix}{message} (details: {log})", file=sys.stderr)
    return 1


def api_away(exc: BaseException) -> str | None:
    """What to say when ``exc`` (or what caused it) is the Prefect API not answering after its
    clients' retries (``--api-patience``); None for any other failure."""
    import httpx

    seen: set[int] = set()
    while exc is not None and not isinstance(exc, httpx.TransportError) and id(exc) not in seen:
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    if not isinstance(exc, httpx.TransportError):
        return None
    url = os.environ.get("PREFECT_API_URL", "the Prefect API")
    return (f"the Prefect API at {url} did not answer within --api-patience "
            f"({type(exc).__name__}: {str(exc).strip() or 'no reply'})")


def server_lost(line: str) -> None:
    """The run's private API server is gone for good: one line, and the command ends now (its
    Dask workers end with it, flows/reaper.py; the finished shards are in the run folder, and
    its lease is taken over by the next run)."""
    print(f"fidoflow: error: {line}; the shards finished so far are kept: rerun the same "
          f"command to resume (details: {log_path()})", file=sys.stderr, flush=True)
    os._exit(1)


def print_methods() -> None:
    """Every registered method kind: its description, default settings and the run-wide
    options that reach it."""
    from fidoflow.pipeline.methods.registry import describe

    for entry in describe():
        print(f"{entry['kind']:<11} {entry['description']}")
        defaults = ", ".join(f"{k}={v}" for k, v in entry["defaults"].items())
        print(f"{'':<11} defaults: {defaults or '(no settings)'}")
        taken = ", ".join(f"--{o.replace('_', '-')}" for o in entry["run_options"])
        print(f"{'':<11} run-wide options: {taken or 'none (set its own: NAME=KIND:key=value)'}")
    print("\nuse: --method KIND[,KIND...]; a variant: --method NAME=KIND:key=value:key=value")


def print_layers(spec: str, card: str | None) -> None:
    """The layers of a model as the methods that read one see it (a TorchScript model or a
    flat exported program by the nodes of its graph), with the two chosen when none is named."""
    import torch

    from fidoflow.pipeline.concepts.features import feature_layer
    from fidoflow.pipeline.methods.gradcam import last_conv_layer
    from fidoflow.pipeline.models.layers import layer_kinds
    from fidoflow.pipeline.models.loading import load_model

    loaded = load_model(spec, card)
    model = loaded.on(torch.device("cpu"), layers=True)
    concepts = feature_layer(model, torch.rand(1, 3, *loaded.input_size))
    cam = last_conv_layer(model)
    print(f"\nlayers of {loaded.name} (gradcam:layer=NAME, fidoflow concepts --layer NAME):")
    for name, kind in layer_kinds(model).items():
        chosen = [what for what, layer in (("gradcam", cam), ("concepts", concepts.name))
                  if layer == name]
        print(f"  {name:<40} {kind}" + (f"   <- {', '.join(chosen)}" if chosen else ""))
    print(f"concepts read the {concepts.describe()}; Grad-CAM reads {cam}")


def main(argv: list[str] | None = None) -> int:
    """The command line. A run's Prefect API server starts first of all, before the parsing
    and the imports that take a second or two, so that it boots meanwhile."""
    argv = sys.argv[1:] if argv is None else argv
    began, began_clock = time.monotonic(), time.time()
    wants_server = bool(argv) and argv[0] in COMMANDS_WITH_A_SERVER and not (
        {"-h", "--help"} & set(argv))
    with api_server(server_lost) if wants_server else nullcontext() as api:
        try:
            return command(argv, began, began_clock, api)
        except BrokenPipeError:  # `fidoflow methods | head`: the reader left, nothing to say
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0


def command(argv: list[str], began: float, began_clock: float, api: ApiServer | None) -> int:
    from fidoflow.storage.lease import Lease
    from fidoflow.storage.runfolder import RunFolder

    from .settings import settings_from_cli

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "methods":
        print_methods()
        if args.model:
            try:
                print_layers(args.model, args.model_card)
            except (ValueError, FileNotFoundError) as exc:
                print(f"fidoflow: error: {str(exc).splitlines()[0]}", file=sys.stderr)
                return 1
        return 0
    prefect_home()
    quiet_console()
    terminate_on_sigterm()
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "critical")  # a torn-down cluster is not news
    try:
        if args.command == "train":
            return run_train(args, api)
        if args.command == "concepts":
            return run_concepts(args, api)
        settings = settings_from_cli(args)
        if args.command == "demo":
            from fidoflow.pipeline.archive.demo import prepare_demo_archive

            from .demo import print_demo_table

            source = prepare_demo_archive(Path(args.out).parent / "demo-archive")
        else:
            source = args.source
            if not Path(source).exists():  # an archive gone since the last run, say
                raise FileNotFoundError(f"source folder not found: {source}")
        config = settings.to_config(source, args.out)
        Lease(RunFolder(config.root)).check()  # a busy folder fails before anything starts
        outcome = execute(config.source, config.root, settings, api)
    except KeyboardInterrupt:
        print("fidoflow: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - every failure reaches the user as one line
        return fail(exc)
    if args.command == "demo":
        print_demo_table(config.root)
    print(increment_line(outcome["increment"]))
    print(f"{outcome['shards_run']} of {outcome['shards']} shards run, "
          f"{outcome['images_run']} images, {outcome['errors']} errors "
          f"({outcome['shard_seconds']:.1f} s of shard work, {outcome['task_seconds']:.1f} s of "
          f"task work in {outcome['tasks']} tasks, {time.monotonic() - began:.1f} s in all)")
    if outcome["analysis_seconds"]:
        print(f"analysis: {outcome['analysis_seconds']:.1f} s of shard work (re-classify and "
              f"evaluate), {outcome['analysis_seconds'] / max(outcome['shard_seconds'], 1e-9):.2f}"
              " × the explain work")
    if outcome["shards_run"]:
        print(f"start-up: the first shard started {outcome['first_shard_started'] - began_clock:.1f}"
              " s after the command")
    if outcome.get("analysis_errors"):
        print(f"{outcome['analysis_errors']} images failed in re-classification or evaluation "
              "(errors/reclassify-part-*, errors/evaluate-part-*)")
    for line in report_lines(config):
        print(line)
    if args.command != "demo" and outcome.get("report"):
        print(f"report: {outcome['report']}")
    print(f"run folder: {config.root}")
    return 0


def entry() -> None:
    """The console script: ``main``, its exit handlers (log files flushed, Prefect's services
    stopped), then the exit without the interpreter's teardown of torch's and Prefect's
    modules, which took 1.0–1.6 s after every finished run (bench/RESULTS.md). An error that
    ends ``main`` with an exception exits the usual way."""
    status = main()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    entry()
