"""How a run is cut into shards and tasks (pipeline/plan.py): tasks of whole shards, about
30 s of work, at most MAX_TASKS, two per worker when there are shards enough; and the cost
every method declares."""

from __future__ import annotations

import pytest

from fidoflow.pipeline.methods import KINDS, parse_methods
from fidoflow.pipeline.plan import (
    MAX_TASKS,
    analysis_passes,
    needing,
    task_size,
    tasks,
)


@pytest.mark.parametrize(("images", "workers", "shard", "seconds", "size"), [
    (8, 2, 4, 10.0, 4),  # FIDO on a CPU: one shard a task, each worker busy
    (48, 2, 12, 10.0, 12),
    (100_000, 2, 16, 0.01, 2944),  # the cheapest method: ~30 s of work a task, 34 tasks
    (10_000_000, 8, 256, 0.0001, 250_112),  # a GPU archive: 40 tasks, 5 rounds of 8 GPUs
    (10_000_000, 2, 16, 10.0, 5056),  # never more than MAX_TASKS tasks
    (3, 2, 2, 1.0, 2),
])
def test_task_size(images: int, workers: int, shard: int, seconds: float, size: int) -> None:
    got = task_size(images, workers, shard, seconds)
    assert got == size and got % shard == 0
    assert -(-images // got) <= MAX_TASKS
    count = -(-images // got)
    assert count % workers == 0 or count == -(-images // shard)  # whole rounds


def test_tasks_hold_whole_shards_and_only_those_with_work_run() -> None:
    groups = tasks(10, 4)
    assert groups == [range(4), range(4, 8), range(8, 10)]
    assert needing(groups, {5, 9}) == [range(4, 8), range(8, 10)]


def test_every_method_declares_its_cost_and_fido_counts_its_steps() -> None:
    for name, kind in KINDS.items():
        assert kind.method.passes(kind.make_config()) >= 1, name
    short, long = parse_methods("a=scd:iterations=10,b=scd:iterations=40").values()
    assert long.passes > 3.5 * short.passes
    assert analysis_passes(1, 50) == 1 + 2 + 102
