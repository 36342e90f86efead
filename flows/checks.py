"""The first task of a flow on a cluster: one worker shows it can import the flow's tasks, or
the flow fails in one line instead of waiting for tasks that never run."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture

WORKER_CHECK_SECONDS = 180.0  # a remote cluster may still be starting its workers


@task(name="check-worker", cache_policy=NO_CACHE, persist_result=False)
def check_worker_task(module: str) -> int:
    """Runs on a worker before any other task: it imports ``module`` (what the tasks run)."""
    import importlib
    import os

    importlib.import_module(module)
    return os.getpid()


def workers_ready(probe: PrefectFuture) -> None:
    """Fail with one line when no worker runs the probe (tasks that cannot be imported there,
    workers that die or never come), instead of waiting for tasks that never run."""
    try:
        probe.result(timeout=WORKER_CHECK_SECONDS)
    except Exception as exc:  # any cause ends the run, named
        cause = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        raise RuntimeError(f"the Dask workers cannot run fidoflow's tasks ({cause})") from exc
