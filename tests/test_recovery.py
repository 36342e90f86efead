"""The decisions after a worker dies (pipeline/stages/recovery.py), without a cluster."""

from __future__ import annotations

import pytest

from fidoflow.pipeline.stages.recovery import Attempt, Recovery, WorkersKeepDying

IMAGES = {0: ["a", "b"], 1: ["c", "d", "e"], 2: ["f"]}


def test_a_task_runs_again_then_splits_into_shards() -> None:
    recovery = Recovery()
    task = Attempt(range(3))
    again = recovery.after_death(task, IMAGES)
    assert again == [Attempt(range(3), deaths=1)]
    assert recovery.after_death(again[0], IMAGES) == [
        Attempt(range(s, s + 1), deaths=1) for s in range(3)]


def test_a_shard_that_kills_twice_is_probed_and_runs_without_its_poison() -> None:
    recovery = Recovery()
    probes = recovery.after_death(Attempt(range(1, 2), deaths=1), IMAGES)
    assert [p.probe for p in probes] == ["c", "d", "e"]
    assert recovery.after_probe(probes[0]) == []  # c survived alone
    again = recovery.after_death(probes[1], IMAGES)  # d's worker died: maybe of a neighbour
    assert again == [Attempt(range(1, 2), deaths=1, probe="d")]
    assert recovery.after_death(again[0], IMAGES) == []  # d killed its worker twice
    assert recovery.after_probe(probes[2]) == [Attempt(range(1, 2), ("d",), 2)]


def test_the_retries_are_bounded() -> None:
    recovery = Recovery()
    last = recovery.after_death(Attempt(range(2, 3), ("f",), 2), IMAGES)
    assert last == [Attempt(range(2, 3), ("f",), 3)]  # every image left out
    with pytest.raises(WorkersKeepDying, match="shard 2"):
        recovery.after_death(last[0], IMAGES)
