"""The cluster a run gets: one function decides, for every device, folder and address."""

from __future__ import annotations

import pytest

from fidoflow.flows.cluster import ClusterPlan, build_runner, plan_cluster


@pytest.mark.parametrize(("args", "plan"), [
    ((2, "auto", None, "/runs/x", 0), ClusterPlan("local", 2)),
    ((2, "cpu", None, "/runs/x", 4), ClusterPlan("local", 2)),
    ((2, "auto", None, "/runs/x", 4), ClusterPlan("cuda", 4, gpus=(0, 1, 2, 3))),
    ((1, "cuda", None, "s3://b/x", 2), ClusterPlan("cuda", 2, gpus=(0, 1))),
    ((2, "cuda:1", None, "/runs/x", 2), ClusterPlan("cuda", 1, gpus=(1,))),
    ((3, "auto", "tcp://10.0.0.5:8786", "/runs/x", 2),
     ClusterPlan("address", 3, address="tcp://10.0.0.5:8786")),
    ((2, "auto", None, "memory://x", 2), ClusterPlan("threads", 2)),
])
def test_plan_for_each_kind_of_run(args: tuple, plan: ClusterPlan) -> None:
    assert plan_cluster(*args) == plan


def test_a_pinned_gpu_worker_uses_its_own_gpu_as_cuda() -> None:
    assert plan_cluster(2, "cuda:1", None, "/r", 2).task_device == "cuda"
    assert plan_cluster(2, "auto", None, "/r", 0).task_device is None


@pytest.mark.parametrize(("args", "message"), [
    ((2, "cuda", None, "/r", 0), "no CUDA GPU is visible"),
    ((2, "cuda:2", None, "/r", 2), "only 2 GPU(s) are visible"),
    ((2, "auto", "tcp://127.0.0.1:1", "memory://x", 0), "cannot be written by the workers"),
])
def test_impossible_plans_are_refused(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        plan_cluster(*args)


def test_runners_realise_the_plans() -> None:
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    local = build_runner(ClusterPlan("local", 3))
    assert isinstance(local, DaskTaskRunner)
    assert local.cluster_kwargs["n_workers"] == 3 and local.cluster_kwargs["host"] == "127.0.0.1"
    assert isinstance(build_runner(ClusterPlan("threads", 2)), ThreadPoolTaskRunner)
    assert build_runner(ClusterPlan("address", 2, address="tcp://h:1")).address == "tcp://h:1"
    try:
        import dask_cuda  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match=r"fidoflow\[gpu\]"):
            build_runner(ClusterPlan("cuda", 2, gpus=(0, 1)))
    else:
        cuda = build_runner(ClusterPlan("cuda", 2, gpus=(0, 1)))
        assert cuda.cluster_kwargs["CUDA_VISIBLE_DEVICES"] == [0, 1]


def die() -> None:
    import os
    os._exit(3)


@pytest.mark.slow
def test_a_flow_whose_workers_die_fails_naming_the_cause() -> None:
    """Workers that die on a task end the flow with an error instead of a hang."""
    from prefect import flow, task

    from fidoflow.flows.checks import workers_ready
    from fidoflow.flows.server import prefect_api

    @task(name="dies")
    def dies() -> None:
        die()

    @flow(name="dying-workers", task_runner=build_runner(ClusterPlan("local", 1)))
    def dying() -> None:
        workers_ready(dies.submit())

    with prefect_api(), pytest.raises(RuntimeError, match="the Dask workers cannot run "
                                                        r"fidoflow's tasks \(KilledWorker"):
        dying()


@pytest.mark.parametrize(("images", "workers", "size", "shards"), [
    (8, 2, 4, 2), (5, 2, 3, 2), (48, 2, 12, 4), (256, 2, 16, 16), (1, 2, 1, 1),
    (1000, 3, 16, 63), (30, 1, 15, 2), (7, 4, 2, 4),
])
def test_automatic_shards_give_every_worker_work(images: int, workers: int, size: int,
                                                 shards: int) -> None:
    from fidoflow.pipeline.plan import LARGEST_SHARD, auto_shard_size

    got = auto_shard_size(images, workers)
    assert (got, -(-images // got)) == (size, shards)
    assert got <= LARGEST_SHARD["cpu"]


def test_gpu_decisions_taken_on_the_cpu() -> None:
    """What a CUDA run decides, checked without a GPU: 8 images per step on a GPU, 1 on a CPU;
    bf16 autocast only on CUDA inputs; a CUDA run's tasks use their worker's own GPU."""
    import torch

    from fidoflow.pipeline.config import RunConfig
    from fidoflow.pipeline.methods.fido import FidoConfig, FidoObjective
    from fidoflow.pipeline.models.device import default_batch_size

    assert default_batch_size(torch.device("cuda")) == 8
    assert default_batch_size(torch.device("cuda", 1)) == 8
    assert default_batch_size(torch.device("cpu")) == 1
    from fidoflow.pipeline.stages import images_per_step

    assert images_per_step(RunConfig(source="/a", root="/r", batch_size=None, device="cpu")) == 1
    assert images_per_step(RunConfig(source="/a", root="/r", batch_size=5, device="cpu")) == 5
    images = torch.rand(1, 3, 8, 8)
    objective = FidoObjective(torch.nn.Flatten(), images, torch.tensor([0]),
                              FidoConfig(mask_size=4), [0])
    assert objective.scene.autocast is False  # a CPU tensor never autocasts, whatever the config
    plan = plan_cluster(4, "auto", None, "/r", 4)
    assert plan.workers == 4 and plan.gpus == (0, 1, 2, 3) and plan.task_device == "cuda"


@pytest.mark.parametrize(("seconds", "retries"), [(1, 1), (2, 1), (3, 2), (60, 5), (300, 8)])
def test_api_patience_becomes_the_fewest_client_retries_that_wait_that_long(
        seconds: float, retries: int) -> None:
    """Prefect's client waits 2, 4, 8, ... s: 5 retries wait 62 s, 8 wait 510 s."""
    from fidoflow.flows.server import retries_for

    assert retries_for(seconds) == retries


def test_patient_clients_reach_this_process_and_the_processes_it_starts() -> None:
    import os

    from prefect.settings import PREFECT_CLIENT_MAX_RETRIES

    from fidoflow.flows.server import patient_clients

    before = PREFECT_CLIENT_MAX_RETRIES.value()
    with patient_clients(30) as retries:
        assert retries == 4 == PREFECT_CLIENT_MAX_RETRIES.value()
        assert os.environ["PREFECT_CLIENT_MAX_RETRIES"] == "4"
    assert PREFECT_CLIENT_MAX_RETRIES.value() == before


@pytest.mark.slow
def test_windowed_tasks_keep_at_most_the_window_in_flight_and_their_order() -> None:
    import threading
    import time

    from prefect import flow, task
    from prefect.task_runners import ThreadPoolTaskRunner

    from fidoflow.flows.concepts import windowed

    lock, running, peak = threading.Lock(), [0], [0]

    @task(name="counted")
    def counted(i: int) -> dict:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05 * (i % 3))
        with lock:
            running[0] -= 1
        return {"i": i}

    @flow(name="windowed", task_runner=ThreadPoolTaskRunner(max_workers=8))
    def many() -> list[dict]:
        return windowed(counted.submit, list(range(12)), 3)

    assert [r["i"] for r in many()] == list(range(12))
    assert peak[0] == 3
