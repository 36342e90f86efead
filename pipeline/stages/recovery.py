"""What a run does when a worker process dies under a task: the decision alone, no cluster
inside (flows/explain_archive.py submits what it says).

A worker can die of something that has nothing to do with the task (the machine's OOM killer,
a node taken away): the task then runs again as it was. Work that kills its worker a second
time is split: a task of several shards into one task per shard; a shard into probes, one per
image, each explaining that image alone and writing nothing. The images whose probe kills its
worker twice are *poison*: the shard then runs without them, each an ``errors`` row
(``WorkerDied``). So a poison image costs its shard about twice its work, never the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace


class WorkersKeepDying(RuntimeError):
    """Workers die under a shard that opens no image: nothing an image did."""


@dataclass(frozen=True)
class Attempt:
    """Work to submit: the ``shards`` of one task, the images to leave out of them
    (``left_out``), how many workers this work has killed (``deaths``), or, for a probe, the one
    image of ``shards`` it explains alone (``probe``)."""

    shards: range
    left_out: tuple[str, ...] = ()
    deaths: int = 0
    probe: str | None = None

    @property
    def label(self) -> str:
        what = f"shards {self.shards.start}-{self.shards.stop - 1}"
        return f"{what}, image {self.probe} alone" if self.probe else what


@dataclass
class Recovery:
    """The probes still out per shard, and the images found poison."""

    probing: dict[int, set[str]] = field(default_factory=dict)
    poison: dict[int, list[str]] = field(default_factory=dict)

    def after_death(self, attempt: Attempt, images_of: dict[int, list[str]]) -> list[Attempt]:
        """What to submit after ``attempt``'s worker died (``images_of``: shard -> its image
        ids, needed when a shard is probed)."""
        if attempt.probe is not None:
            if attempt.deaths == 0:  # it may have died of a neighbour on its worker
                return [replace(attempt, deaths=1)]
            self.poison.setdefault(attempt.shards.start, []).append(attempt.probe)
            return self.after_probe(attempt)
        if attempt.deaths == 0:
            return [replace(attempt, deaths=1)]
        if len(attempt.shards) > 1:
            return [Attempt(range(s, s + 1), attempt.left_out, 1) for s in attempt.shards]
        shard = attempt.shards.start
        if attempt.deaths >= 3:  # it died with every image left out: not an image's doing
            raise WorkersKeepDying(f"the Dask workers die on shard {shard} even with none of "
                                   "its images opened; see the workers' logs")
        if attempt.deaths == 2:  # it died without its poison too: leave every image out
            return [Attempt(attempt.shards, tuple(images_of[shard]), 3)]
        self.probing[shard] = set(images_of[shard])
        return [Attempt(attempt.shards, probe=i) for i in images_of[shard]]

    def after_probe(self, probe: Attempt) -> list[Attempt]:
        """A probe ended (survived or not): once the shard's last probe is back, the shard
        runs without its poison images."""
        shard = probe.shards.start
        waiting = self.probing.get(shard, set())
        waiting.discard(probe.probe)
        if waiting:
            return []
        self.probing.pop(shard, None)
        return [Attempt(probe.shards, tuple(self.poison.get(shard, ())), 2)]
