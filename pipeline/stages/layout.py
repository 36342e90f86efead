"""The run folder's tables as this run writes them: the ``metrics`` table with the registered
metrics' columns, and every sharded table with its writers' prefixes (what a task merges and a
finished run compacts)."""

from __future__ import annotations

import functools

from fidoflow.pipeline.metrics import METRICS
from fidoflow.storage import parts, tables


@functools.cache
def metrics_table() -> tables.Table:
    """The ``metrics`` table with every registered metric's columns (docs: the metric's
    description, its score direction, and when it is null)."""
    def doc(column, metric) -> str:
        better = f" ({column.better} is better)" if column.better else ""
        null = "; null without a box" if "boxes" in metric.needs else ""
        return f"{column.description}{better}{null}"

    return tables.METRICS.with_columns(tuple(
        tables.Column(c.name, c.type, doc(c, m)) for m in METRICS for c in m.columns))


def sharded_tables() -> list[tuple[tables.Table, str]]:
    """Every sharded table with each of its writers' name prefixes."""
    out = [(t, parts.DEFAULT_PREFIX) for t in (tables.IMAGES, tables.PREDICTIONS, tables.SAG,
                                               tables.CONCEPTS, tables.RECLASSIFY, metrics_table(),
                                               tables.PARTS)]
    return out + [(tables.ERRORS, prefix) for prefix in tables.ERROR_PREFIX.values()]
