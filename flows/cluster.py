"""Which Dask cluster a run gets, decided by one function (``plan_cluster``) and built by another.

- an address given: that scheduler, checked to answer before anything is written;
- a ``memory://`` run folder: threads of this process (each process has its own memory
  filesystem, so worker processes would each see an empty folder);
- a CUDA device with GPUs visible: ``dask_cuda.LocalCUDACluster``, one worker per GPU, each
  pinned to its GPU (``CUDA_VISIBLE_DEVICES``), so its tasks use ``cuda`` (= its own GPU);
- a cluster class given (``--cluster dask_jobqueue.SLURMCluster --cluster-options opts.yaml``):
  that class with the YAML's keyword arguments, held at ``workers`` workers by Dask's adaptive
  scaling (minimum = maximum), which every cluster manager implements;
- otherwise a LocalCluster of single-threaded worker processes on 127.0.0.1.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from prefect.task_runners import TaskRunner

Kind = Literal["address", "threads", "cuda", "local", "class"]
WINDOW = 2  # tasks in flight per worker: the flow's memory and the Prefect database grow with it


@dataclass(frozen=True)
class ClusterPlan:
    """What to start: ``kind``, how many workers, the scheduler ``address``, the ``gpus``, or
    the ``cluster`` class and its ``options`` (keyword arguments)."""

    kind: Kind
    workers: int
    address: str | None = None
    gpus: tuple[int, ...] = ()
    cluster: str | None = None
    options: tuple[tuple[str, object], ...] = ()

    @property
    def task_device(self) -> str | None:
        """The device a task should use instead of the run's (a pinned GPU is ``cuda``)."""
        return "cuda" if self.kind == "cuda" else None


def plan_cluster(workers: int, device: str, address: str | None, root: str,
                 gpu_count: int, cluster: str | None = None,
                 cluster_options: str | None = None) -> ClusterPlan:
    """The cluster for a run of ``workers`` on ``device`` writing to ``root``, on a machine with
    ``gpu_count`` visible GPUs (``cluster``: a cluster class, ``cluster_options``: the YAML
    file of its keyword arguments)."""
    in_memory = root.startswith("memory://")
    if cluster:
        if in_memory:
            raise ValueError("a memory:// run folder lives inside one process; it cannot be "
                             "written by the workers of --cluster")
        cluster_class(cluster)  # an unknown class fails now, in one line
        return ClusterPlan("class", workers, cluster=cluster,
                           options=tuple(sorted(read_options(cluster_options).items())))
    if address:
        if in_memory:
            raise ValueError("a memory:// run folder lives inside one process; it cannot be "
                             "written by the workers of --dask-address")
        return ClusterPlan("address", workers, address=address)
    if in_memory:
        return ClusterPlan("threads", workers)
    wants_cuda = device.startswith("cuda") or (device == "auto" and gpu_count > 0)
    if wants_cuda:
        if gpu_count == 0:
            raise ValueError(f"device {device!r} requested but no CUDA GPU is visible")
        if ":" in device:
            index = int(device.split(":", 1)[1])
            if index >= gpu_count:
                raise ValueError(f"device {device!r} requested but only {gpu_count} GPU(s) "
                                 "are visible")
            return ClusterPlan("cuda", 1, gpus=(index,))
        return ClusterPlan("cuda", gpu_count, gpus=tuple(range(gpu_count)))
    return ClusterPlan("local", workers)


def cluster_class(name: str) -> type:
    """The class ``package.module.Class``, or a one-line error saying how to get it."""
    import importlib

    module, _, attribute = name.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), attribute) if module else None
    except ImportError as exc:
        raise ValueError(f"cluster class {name!r}: cannot import {module} ({exc}); install "
                         "the package that provides it (e.g. dask-jobqueue)") from None
    except AttributeError:
        found = None
    if not isinstance(found, type):
        raise ValueError(f"cluster class {name!r} not found: give package.module.Class, e.g. "  # noqa: TRY004
                         "dask_jobqueue.SLURMCluster")
    return found


def read_options(path: str | None) -> dict:
    """A cluster class's keyword arguments from a YAML mapping (none without a file)."""
    if path is None:
        return {}
    import yaml

    with open(path, encoding="utf-8") as fh:
        options = yaml.safe_load(fh) or {}
    if not isinstance(options, dict):
        raise ValueError(f"{path}: cluster options must be a YAML mapping of keyword arguments")  # noqa: TRY004
    return options


def visible_gpus() -> int:
    import torch
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_scheduler(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds, with one line, when no Dask scheduler answers at ``address``: nothing
    answers, or a Dask worker or nanny does (its address is not the scheduler's)."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from distributed.core import rpc

    async def identity() -> dict:
        async with rpc(address, timeout=timeout) as remote:
            return await remote.identity()

    try:
        with ThreadPoolExecutor(1) as thread:  # a loop of its own, whatever the caller runs
            found = thread.submit(asyncio.run, identity()).result(timeout=timeout + 5)
    except (OSError, TimeoutError, ValueError) as exc:
        raise ValueError(f"no Dask scheduler answers at {address} ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else 'no answer'})") from None
    kind = found.get("type") if isinstance(found, dict) else None
    if kind != "Scheduler":
        raise ValueError(f"a Dask {str(kind or 'server').lower()} answers at {address}, not a "
                         "scheduler: give the scheduler's address (what `dask scheduler` "
                         "prints, tcp://host:8786 by default)")


@contextmanager
def scheduler_loss_said(address: str | None) -> Iterator[None]:
    """A scheduler that goes away mid-run (Dask then cancels every future of the run, reason
    ``scheduler-connection-lost``) ends the run in one line that says so, and how to resume."""
    from distributed.client import FutureCancelledError

    try:
        yield
    except FutureCancelledError as exc:
        if exc.reason != "scheduler-connection-lost":
            raise
        raise RuntimeError(f"the Dask scheduler {address or 'of the run'} went away mid-run; "
                           "the shards finished so far are kept: rerun against a running "
                           "scheduler to resume") from exc


# what every task imports on a worker: Dask, the pipeline, and Prefect's task engine (each
# worker's first task otherwise spent ~1.7 s importing it, the flow waiting)
WORKER_PRELOAD = ("distributed", "fidoflow.pipeline.stages", "prefect.task_engine")
FORK = {"distributed.worker.multiprocessing-method": "forkserver"}


def configure_dask() -> None:
    """Settings for the clusters fidoflow starts.

    Dask spawns its workers with ``MALLOC_TRIM_THRESHOLD_`` set, which also freezes glibc's mmap
    threshold at 128 KiB: every activation tensor of every step is then mmapped and page-faulted
    afresh (62 M page faults, 107 s of system time for 8 photos). Our workers run without it.
    A worker that dies fails its task at once (``allowed-failures`` 0) instead of Dask
    running it again unseen: the flow says so and decides what runs next
    (pipeline/stages/recovery.py: again, split, probed, the poison image left out). A worker
    holds no more tasks than it has threads (``worker-saturation`` 1.0; Dask's 1.1 gives a
    one-thread worker two), so a worker that dies takes only the task it was running.
    """
    import dask

    dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
                     "distributed.scheduler.allowed-failures": 0,
                     "distributed.scheduler.worker-saturation": 1.0})


def start_fork_server(tasks_module: str | None = None) -> None:
    """Start, now, the process that the CLI's local workers fork from (``prestarted``).

    It imports Dask, torch, Prefect and the tasks' code (``tasks_module``, the flow's) once,
    while the caller goes on with its own imports, instead of each worker importing them afresh
    after the cluster starts (~4 s of CPU a worker on a machine whose every core the start-up
    uses). It gets the environment Dask gives a worker before it spawns; each worker is given
    the caller's environment as it is when the cluster starts (a fork server lives as long as
    its process). Only the CLI's clusters fork: flows started otherwise spawn their workers as
    Dask does by default.
    """
    from multiprocessing import forkserver

    import dask
    from distributed.utils import get_mp_context

    configure_dask()
    for name, value in dask.config.get("distributed.nanny.pre-spawn-environ").items():
        if value is not None:
            os.environ[name] = str(value)  # as the nanny sets them before each spawn
    with dask.config.set(FORK):
        get_mp_context().set_forkserver_preload(
            [*WORKER_PRELOAD, *([tasks_module] if tasks_module else [])])
    forkserver.ensure_running()


def cluster_spec(plan: ClusterPlan) -> tuple[str, dict]:
    """The cluster class and its arguments for a ``local`` or ``cuda`` plan."""
    common = {"threads_per_worker": 1, "host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"}
    if plan.kind == "cuda":
        try:
            import dask_cuda  # noqa: F401
        except ImportError:
            raise ValueError("a CUDA run needs dask-cuda: pip install 'fidoflow[gpu]'") from None
        return "dask_cuda.LocalCUDACluster", {"CUDA_VISIBLE_DEVICES": list(plan.gpus), **common}
    return "distributed.LocalCluster", {"n_workers": plan.workers, "processes": True, **common}


def build_runner(plan: ClusterPlan) -> TaskRunner:
    """The Prefect task runner that realises ``plan``."""
    from prefect_dask import DaskTaskRunner

    if plan.kind == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner
        return ThreadPoolTaskRunner(max_workers=plan.workers)
    if plan.kind == "address":
        return DaskTaskRunner(address=plan.address)
    if plan.kind == "class":
        return DaskTaskRunner(cluster_class=plan.cluster, cluster_kwargs=dict(plan.options),
                              adapt_kwargs={"minimum": plan.workers, "maximum": plan.workers})
    configure_dask()
    cluster_class, kwargs = cluster_spec(plan)
    return DaskTaskRunner(cluster_class=cluster_class, cluster_kwargs=kwargs)


def warm_worker(config_json: dict) -> None:
    """On a worker: import the shard tasks' code and load and prepare the run's model, so that
    the first shard starts explaining at once (each worker keeps both for the run)."""
    from fidoflow.pipeline import stages
    from fidoflow.pipeline.config import RunConfig
    from fidoflow.pipeline.models.device import resolve_device

    config = RunConfig.from_json(config_json)
    stages.model_of(config).on(resolve_device(config.device), config.compile)


@contextmanager
def prestarted(plan: ClusterPlan, warm: Callable[[], object]) -> Iterator[str | None]:
    """For a ``local`` or ``cuda`` plan: start the cluster now and run ``warm`` on each worker
    in the background (import the tasks, load the model), yielding its address (the CLI
    overlaps this with the API server's boot); the cluster closes when the block ends. Other
    plans yield None: the flow makes its own."""
    if plan.kind not in ("local", "cuda"):
        yield None
        return
    import importlib

    import dask
    from distributed import Client

    configure_dask()
    cluster_class, kwargs = cluster_spec(plan)
    fork = plan.kind == "local"
    if fork:
        start_fork_server()  # at once if it runs already
        kwargs["env"] = dict(os.environ)
    module, name = cluster_class.rsplit(".", 1)
    with dask.config.set(FORK if fork else {}):
        cluster = getattr(importlib.import_module(module), name)(**kwargs)
    with cluster, Client(cluster, set_as_default=False) as client:
        def warm_all() -> None:
            with suppress(Exception):  # a model that cannot load fails the run itself, named
                client.run(warm)

        warming = threading.Thread(target=warm_all, daemon=True, name="fidoflow-warm-workers")
        warming.start()
        yield cluster.scheduler_address
