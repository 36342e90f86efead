"""The first task of a flow on a cluster: one worker shows it can import the flow's tasks and
sees the run folder as the flow does, or the flow fails in one line instead of waiting for tasks
that never run (or writing the run where nobody looks)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture

WORKER_CHECK_SECONDS = 180.0  # a remote cluster may still be starting its workers


class FolderNotShared(RuntimeError):
    """The workers do not see the run folder the flow holds."""


@task(name="check-worker", cache_policy=NO_CACHE, persist_result=False)
def check_worker_task(module: str, root: str | None = None, token: str | None = None) -> int:
    """Runs on a worker before any other task: it imports ``module`` (what the tasks run) and,
    given the run folder ``root`` and its lease ``token``, reads the lease the flow took."""
    import importlib
    import os

    importlib.import_module(module)
    if root is not None and token is not None:
        from fidoflow.storage.lease import sees_lease
        from fidoflow.storage.runfolder import RunFolder

        if not sees_lease(RunFolder(root), token):
            raise FolderNotShared(
                f"the Dask workers do not see the run folder {root} (worker pid {os.getpid()} "
                "finds no lease of this run there): give a folder on a filesystem every worker "
                "mounts at the same path, or an object-store URL such as s3://bucket/run")
    return os.getpid()


def workers_ready(probe: PrefectFuture) -> None:
    """Fail with one line when no worker runs the probe (tasks that cannot be imported there,
    workers that die or never come, a run folder they do not see), instead of waiting for
    tasks that never run."""
    try:
        probe.result(timeout=WORKER_CHECK_SECONDS)
    except FolderNotShared:
        raise
    except Exception as exc:  # any cause ends the run, named
        cause = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        raise RuntimeError(f"the Dask workers cannot run fidoflow's tasks ({cause})") from exc
