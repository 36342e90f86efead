"""Timing that can be trusted on a shared machine: refuse to time under load, alternate the
sides (A B A B ...), repeat, report medians with the load average of every figure."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime

QUIET_LOAD = 1.3  # 1-minute load average above which other jobs are running on 2 cores


def load_average() -> float:
    return os.getloadavg()[0]


def require_quiet(limit: float = QUIET_LOAD, wait: float = 120.0) -> float:
    """The load average once it is below ``limit`` (waiting up to ``wait`` s for it to settle);
    SystemExit when other jobs keep the machine busy: such a timing would not be a result."""
    deadline = time.monotonic() + wait
    while (load := load_average()) > limit:
        if time.monotonic() > deadline:
            raise SystemExit(f"load average {load:.2f} > {limit}: other jobs are running; "
                             "a timing taken now is not a result (stop them, or --force)")
        time.sleep(5)
    return load


def machine() -> dict[str, object]:
    return {"host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "date": datetime.now(UTC).isoformat(timespec="minutes")}


def alternate(sides: dict[str, Callable[[], dict]], repeats: int, force: bool = False,
              report: Callable[[dict], None] = print) -> dict[str, list[dict]]:
    """Run each side once per round, in turn, ``repeats`` rounds. Each call returns a dict with
    at least ``seconds``; the load average before it is added as ``load``."""
    results: dict[str, list[dict]] = {name: [] for name in sides}
    for round_ in range(repeats):
        for name, side in sides.items():
            load = load_average() if force else require_quiet()
            record = {"side": name, "round": round_, "load": round(load, 2), **side()}
            results[name].append(record)
            report(record)
    return results


def medians(results: dict[str, list[dict]], key: str = "seconds") -> dict[str, float]:
    return {name: statistics.median(r[key] for r in records) for name, records in results.items()}
